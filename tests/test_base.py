"""The pinned snapshot: digest, verification, corruption."""

import pytest

from peftops.model.snapshot import PINNED_FILES, open_snapshot
from peftops.errors import SnapshotError
from tiny import make_snapshot


def test_snapshot_digest_is_stable_and_verified(tmp_path):
    a = make_snapshot(tmp_path / "a", seed=0)
    b = make_snapshot(tmp_path / "b", seed=0)
    c = make_snapshot(tmp_path / "c", seed=1)
    assert a.digest == b.digest != c.digest
    assert set(a.files) == set(PINNED_FILES)
    assert open_snapshot(a.path, expected_digest=a.digest).digest == a.digest


def test_corrupted_weights_are_refused_naming_the_file(tmp_path):
    snap = make_snapshot(tmp_path)
    weights = snap.path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(SnapshotError) as err:
        open_snapshot(snap.path)
    assert "model.safetensors" in str(err.value) and "corrupted" in str(err.value)


def test_pinned_digest_mismatch_is_refused(tmp_path):
    snap = make_snapshot(tmp_path)
    with pytest.raises(SnapshotError, match="differs from the pinned"):
        open_snapshot(snap.path, expected_digest="0" * 64)


def test_missing_snapshot_says_what_to_run(tmp_path):
    with pytest.raises(SnapshotError, match="peftops base import"):
        open_snapshot(tmp_path / "nothing")


def test_pad_id_is_read_from_the_snapshot_and_matches_its_tokenizer(tmp_path):
    from peftops.model.snapshot import load_tokenizer, pad_token_id, snapshot_dir, write_snapshot
    from tiny import tiny_model, tiny_tokenizer

    snap = make_snapshot(tmp_path)
    assert pad_token_id(snap) == load_tokenizer(snap).pad_token_id == 0
    # The tokenizer decides: a model config that says otherwise is corrected in the snapshot.
    tok = tiny_tokenizer()
    model = tiny_model(vocab_size=len(tok))
    model.config.pad_token_id = 5
    other = write_snapshot(model, tok, snapshot_dir("other", tmp_path), "other")
    assert pad_token_id(other) == 0
