"""Where the registry keeps its state by default."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """PEFTOPS_HOME, else ./.peftops."""
    return Path(os.environ.get("PEFTOPS_HOME") or ".peftops").resolve()


def default_db_url() -> str:
    """PEFTOPS_REGISTRY_DB, else SQLite under the state dir."""
    return os.environ.get("PEFTOPS_REGISTRY_DB") or \
        f"sqlite:///{state_dir() / 'registry' / 'registry.db'}"


def default_blob_uri() -> str:
    """PEFTOPS_REGISTRY_BLOBS, else a blob directory under the state dir."""
    return os.environ.get("PEFTOPS_REGISTRY_BLOBS") or \
        (state_dir() / "registry" / "blobs").as_uri()


def busy_timeout_ms() -> int:
    """PEFTOPS_REGISTRY_BUSY_TIMEOUT (seconds a SQLite writer waits for the lock), else 60."""
    raw = os.environ.get("PEFTOPS_REGISTRY_BUSY_TIMEOUT")
    try:
        seconds = float(raw) if raw else 60.0
    except ValueError:
        from .errors import InvalidArgument

        raise InvalidArgument(f"PEFTOPS_REGISTRY_BUSY_TIMEOUT={raw!r} must be a number of "
                              "seconds") from None
    return int(seconds * 1000)
