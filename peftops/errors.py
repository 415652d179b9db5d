"""Typed, user-facing errors.

Every error a user can cause (bad data, bad config, a corrupted snapshot) is a
``PeftopsError``: the CLI prints its message and exits non-zero, without a traceback.
Messages name the file, line and field where there is one, so the user can act on them.
"""

from __future__ import annotations

from pathlib import Path


class PeftopsError(Exception):
    """Base class of errors caused by input or environment, not by a bug."""


class ConfigError(PeftopsError):
    """An invalid configuration value; the message names the field."""

    def __init__(self, field: str, message: str, source: str | None = None):
        where = f"{source}: " if source else ""
        super().__init__(f"{where}invalid value for '{field}': {message}")
        self.field = field
        self.source = source


class DataError(PeftopsError):
    """A missing, malformed or empty data file; the message names the file and line."""

    def __init__(self, path: Path | str, message: str, line: int | None = None, field: str | None = None):
        loc = f"{path}"
        if line is not None:
            loc += f", line {line}"
        if field is not None:
            loc += f", field '{field}'"
        super().__init__(f"{loc}: {message}")
        self.path = str(path)
        self.line = line
        self.field = field


class SnapshotError(PeftopsError):
    """A base-model snapshot is missing, incomplete or does not match its pinned digest."""


class TrainingError(PeftopsError):
    """Training cannot continue (for example the loss became NaN or Inf)."""


class ParityError(PeftopsError):
    """A merged model does not reproduce the adapter-applied model within tolerance."""


class MirrorError(PeftopsError):
    """MLflow's Model Registry could not be made to match ours; the message lists what is off.

    Our registry is the source of truth and is never changed by a failed mirror."""
