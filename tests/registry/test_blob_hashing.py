"""hash_file reads a file by its size (one read for a small one, chunks for a large one), and
FileBlobStore.put writes bytes already in memory: the same answers as a plain hash of the
bytes, at every size around the boundaries, and nothing stored when the bytes are wrong. The
streamed copy under put-from-file, fetch and S3 (the same first-read sizing, or one byte when
the source's size is unknown) likewise."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from registry import CorruptBlob
from registry.adapter import KEEP_BYTES
from registry.blobs import _CHUNK, FileBlobStore, _copy_hashing, hash_file

SIZES = [0, 1, 4_096, KEEP_BYTES - 1, KEEP_BYTES, KEEP_BYTES + 1, _CHUNK - 1, _CHUNK,
         _CHUNK + 1, 2 * _CHUNK + 3]


@pytest.mark.parametrize("keep", [0, KEEP_BYTES])
@pytest.mark.parametrize("size", sorted(set(SIZES)))
def test_hash_file_matches_a_plain_hash_at_every_size(tmp_path, size, keep):
    data = os.urandom(size)
    f = tmp_path / "f"
    f.write_bytes(data)
    digest, n, content = hash_file(f, keep)
    assert (digest, n) == (hashlib.sha256(data).hexdigest(), size)
    # The bytes come back exactly when the file is no larger than keep.
    assert content == (data if size <= keep else None)


@pytest.mark.parametrize("size", sorted(set(SIZES)))
def test_streamed_copies_are_whole_at_every_size(tmp_path, size):
    data = os.urandom(size)
    want = (hashlib.sha256(data).hexdigest(), size)
    out = io.BytesIO()
    assert _copy_hashing(io.BytesIO(data), out) == want  # size unknown: a stream
    assert out.getvalue() == data
    src = tmp_path / "src"
    src.write_bytes(data)
    store = FileBlobStore(tmp_path / "blobs")
    assert store.put(src, want[0])  # from the file, not from kept bytes
    store.get(want[0], tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data


def test_put_from_memory_stores_verified_bytes_and_refuses_wrong_ones(tmp_path):
    store = FileBlobStore(tmp_path / "blobs")
    data = os.urandom(5_000)
    sha = hashlib.sha256(data).hexdigest()
    src = tmp_path / "adapter_model.safetensors"  # only named in messages: never read

    with pytest.raises(CorruptBlob, match=f"source file {src}: sha256 is {sha}"):
        store.put(src, "0" * 64, data)
    assert not store.exists("0" * 64) and list(store.list_temp()) == []

    assert store.put(src, sha, data) is True
    assert store.path(sha).read_bytes() == data and store.intact(sha)
    assert store.put(src, sha, data) is False  # an intact copy is there

    store.path(sha).write_bytes(b"damaged")  # a damaged copy is written again
    assert store.put(src, sha, data) is True
    assert store.path(sha).read_bytes() == data
    assert list(store.list_temp()) == []


def test_scan_of_a_missing_folder_says_which(tmp_path):
    from registry import InvalidAdapter
    from registry.adapter import scan_adapter

    for p in (tmp_path / "absent", tmp_path / "a-file"):
        if p.name == "a-file":
            p.write_text("x")
        with pytest.raises(InvalidAdapter, match=f"adapter folder {p} does not exist or is "
                                                 "not a directory"):
            scan_adapter(p)
