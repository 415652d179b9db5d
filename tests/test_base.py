"""The pinned snapshot: digest, verification, corruption."""

import json

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


def test_gemma3_chat_template_is_pinned_with_the_snapshot(tmp_path):
    from peftops.model.snapshot import CHAT_TEMPLATE_FILE, snapshot_dir, with_chat_template, write_snapshot
    from tiny import tiny_chat_tokenizer, tiny_model, tiny_tokenizer

    tok = with_chat_template(tiny_chat_tokenizer())
    assert "namespace(system" in tok.chat_template  # a template the tokenizer has is kept
    tok = with_chat_template(tiny_tokenizer())  # none: Gemma 3's
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi "},
            {"role": "assistant", "content": "Hello"}]
    assert tok.apply_chat_template(chat, tokenize=False) == (
        f"{tok.bos_token}<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n")
    assert tok.apply_chat_template(chat[:2], tokenize=False, add_generation_prompt=True).endswith(
        "<start_of_turn>model\n")
    model = tiny_model(0, vocab_size=len(tok))
    snap = write_snapshot(model, tok, snapshot_dir("gemma-3-270m", tmp_path / "a"), "gemma-3-270m")
    assert CHAT_TEMPLATE_FILE in snap.files  # the digest covers the template
    plain = make_snapshot(tmp_path / "b")
    assert CHAT_TEMPLATE_FILE not in plain.files
    (snap.path / CHAT_TEMPLATE_FILE).write_text(tok.chat_template + "{{ 'x' }}")
    with pytest.raises(SnapshotError, match="chat_template.jinja.*corrupted"):
        open_snapshot(snap.path)
    (plain.path / CHAT_TEMPLATE_FILE).write_text("{{ bos_token }}")  # dropped in by hand: unpinned
    with pytest.raises(SnapshotError, match="not in the snapshot manifest"):
        open_snapshot(plain.path)


def test_the_digest_does_not_depend_on_how_the_tokenizer_was_loaded(tmp_path):
    """A snapshot built offline (HF_HUB_OFFLINE=1: the tokenizer is loaded with local_files_only)
    pins the same digest as one built online: load options are not part of the model."""
    from transformers import AutoTokenizer

    from peftops.model.snapshot import snapshot_dir, write_snapshot
    from tiny import tiny_model, tiny_tokenizer

    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    model = tiny_model(0, vocab_size=len(tiny_tokenizer()))
    digests = []
    for offline in (True, False):
        tok = AutoTokenizer.from_pretrained(tmp_path / "tok", local_files_only=offline)
        snap = write_snapshot(model, tok, snapshot_dir("m", tmp_path / f"home-{offline}"), "m")
        cfg = json.loads((snap.path / "tokenizer_config.json").read_text())
        assert "local_files_only" not in cfg
        digests.append(snap.digest)
    assert digests[0] == digests[1]
