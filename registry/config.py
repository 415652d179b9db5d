"""Where the registry keeps its state by default.

The state directory is found as git finds its repository: $PEFTOPS_HOME when set, else the
nearest `.peftops/` in the current directory or one of its parents, else (for commands that
create state) `./.peftops`.
"""

from __future__ import annotations

import os
from pathlib import Path

STATE_NAME = ".peftops"


def find_state(start: str | os.PathLike | None = None) -> Path | None:
    """The nearest `.peftops/` directory in `start` (default: the current directory) or one of
    its parents, or None."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / STATE_NAME).is_dir():
            return folder / STATE_NAME
    return None


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The directory holding the nearest `.peftops/`, else the current directory."""
    found = find_state(start)
    return found.parent if found is not None else Path(start or Path.cwd()).resolve()


def state_dir(*, must_exist: bool = False) -> Path:
    """PEFTOPS_HOME, else the nearest `.peftops/` upwards from the current directory, else
    ./.peftops. With must_exist, finding none (and no PEFTOPS_HOME) is an error naming where
    it was looked for (commands that only read must not create an empty registry)."""
    env = os.environ.get("PEFTOPS_HOME")
    if env:  # an explicit choice: used as given
        return Path(env).resolve()
    found = find_state()
    if found is not None:
        return found
    if must_exist:
        from .errors import NotFound

        raise NotFound(f"no {STATE_NAME}/ directory in {Path.cwd().resolve()} or any of its "
                       "parents: run from the project's directory, or set PEFTOPS_HOME (or "
                       "--db and --blobs)")
    return (Path.cwd() / STATE_NAME).resolve()


def default_db_url(*, must_exist: bool = False) -> str:
    """PEFTOPS_REGISTRY_DB, else SQLite under the state dir."""
    return os.environ.get("PEFTOPS_REGISTRY_DB") or \
        f"sqlite:///{state_dir(must_exist=must_exist) / 'registry' / 'registry.db'}"


def default_blob_uri(*, must_exist: bool = False) -> str:
    """PEFTOPS_REGISTRY_BLOBS, else a blob directory under the state dir."""
    return os.environ.get("PEFTOPS_REGISTRY_BLOBS") or \
        (state_dir(must_exist=must_exist) / "registry" / "blobs").as_uri()


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
