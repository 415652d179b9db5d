"""Content digests (sha256) of files, directories and canonical JSON."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_CHUNK = 8 * 1024 * 1024


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of one file, read in chunks (snapshots are ~1 GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal objects give equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def combine(named_digests: dict[str, str]) -> str:
    """One digest over several named digests, independent of insertion order."""
    h = hashlib.sha256()
    for name in sorted(named_digests):
        h.update(f"{name}\0{named_digests[name]}\n".encode())
    return h.hexdigest()


def text_sha256(text: str) -> str:
    """Hex sha256 of a string's UTF-8 bytes."""
    return hashlib.sha256(text.encode()).hexdigest()
