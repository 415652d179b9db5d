"""Typed errors of the adapter registry.

Every failure a user can cause or fix is one of these, with a message that says what
happened and what to do about it. `assert` is kept for internal invariants only.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of every error the registry raises on purpose."""


class NotFound(RegistryError):
    """A task, version, alias, base or blob that does not exist."""


class Conflict(RegistryError):
    """The request contradicts what is stored (e.g. deleting a version that holds an alias)."""


class InvalidName(RegistryError):
    """A name (task, alias, tag or metric key, file name) that is unsafe or malformed."""


class InvalidArgument(RegistryError):
    """A malformed argument other than a name: a bad page token, operator or metric value."""


class UnknownMetric(InvalidArgument):
    """A search by a metric no version records; `known` lists the names that are recorded."""

    def __init__(self, name: str, known: list[str]):
        listed = ", ".join(known) if known else "none yet"
        super().__init__(f"unknown metric {name!r}: no version records it; the metrics "
                         f"recorded are: {listed}")
        self.known = list(known)


class InvalidAdapter(RegistryError):
    """An adapter folder that is not a readable PEFT-format adapter."""


class BasePinMismatch(RegistryError):
    """An adapter and a base model whose digests differ."""


class CorruptBlob(RegistryError):
    """Stored bytes whose sha256 no longer matches their address."""


# The name the issue uses; kept as an alias so both read naturally.
BlobIntegrityError = CorruptBlob


class LintError(RegistryError):
    """The servability lint refused an adapter; `problems` lists every finding."""

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message + "".join(f"\n  - {p}" for p in problems))
        self.problems = list(problems)


class StorageUnavailable(RegistryError):
    """The database or the blob store did not answer in time (named in the message)."""
