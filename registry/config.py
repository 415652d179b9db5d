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
