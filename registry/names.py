"""Validation of user-supplied names.

Task names become directory names on export and keys in URLs, so they are restricted to a
portable, path-safe alphabet. Free-form values (tag values, lineage) only forbid control
characters, which would corrupt terminals and logs.
"""

from __future__ import annotations

import math
import numbers
import re
import unicodedata

from .errors import InvalidArgument, InvalidName

_TASK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127}")
_METHOD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_DIGEST = re.compile(r"[A-Za-z0-9][A-Za-z0-9:_.+-]{7,199}")
_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")
_VERSION_LIKE = re.compile(r"v?\d+")


# The name rules as JSON-Schema patterns, for the HTTP API's published schema.
SCHEMA_PATTERNS = {kind: f"^{p.pattern}$" for kind, p in
                   {"task": _TASK, "alias": _ALIAS, "key": _KEY, "method": _METHOD,
                    "digest": _DIGEST, "file": _FILE}.items()}

_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _has_control(s: str) -> bool:
    if s.isascii():  # the common case, checked without a per-character loop
        return _ASCII_CONTROL.search(s) is not None
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in s)


def _check(kind: str, value: object, pattern: re.Pattern[str], rule: str) -> str:
    if not isinstance(value, str):
        raise InvalidName(f"{kind} must be a string, got {type(value).__name__}")
    if _has_control(value):
        raise InvalidName(f"{kind} {value!r} contains control characters")
    if not pattern.fullmatch(value) or ".." in value:
        raise InvalidName(f"{kind} {value!r} is not allowed: {rule}")
    return value


def task_name(value: object) -> str:
    """Validate a task name: it is used as a directory name on export and in URLs."""
    return _check("task name", value, _TASK,
                  "use 1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit, no '..'")


def alias_name(value: object) -> str:
    """Validate an alias such as 'production'; 'v3'-like names are refused as ambiguous."""
    name = _check("alias", value, _ALIAS,
                  "use 1-64 of A-Z a-z 0-9 _ -, starting with a letter")
    if _VERSION_LIKE.fullmatch(name) or name == "latest":
        raise InvalidName(f"alias {name!r} is reserved: it reads like a version number")
    return name


def key_name(value: object, kind: str = "key") -> str:
    """Validate a tag or metric key."""
    return _check(kind, value, _KEY, "use 1-128 of A-Z a-z 0-9 _ . : / -, no '..'")


def method_name(value: object) -> str:
    """Validate a method label such as 'lora' or 'dora'."""
    return _check("method", value, _METHOD, "use 1-64 of A-Z a-z 0-9 _ . + -")


def base_digest(value: object) -> str:
    """Validate a base-model digest such as 'sha256:<hex>'."""
    return _check("base digest", value, _DIGEST,
                  "use 8-200 of A-Z a-z 0-9 : _ . + -, e.g. 'sha256:<64 hex digits>'")


def file_name(value: object) -> str:
    """Validate the name of one file of an adapter folder (no directories)."""
    return _check("file name", value, _FILE,
                  "a plain file name of A-Z a-z 0-9 . _ -, without directories")


def text_value(value: object, kind: str = "value", max_len: int = 4096) -> str:
    """Validate a free-form string value (tag value, base label)."""
    if not isinstance(value, str):
        raise InvalidName(f"{kind} must be a string, got {type(value).__name__}")
    if _has_control(value):
        raise InvalidName(f"{kind} {value!r} contains control characters")
    if len(value) > max_len:
        raise InvalidName(f"{kind} is {len(value)} characters long; the limit is {max_len}")
    return value


def metric_value(key: str, value: object) -> float:
    """Validate a metric value: a finite number."""
    # numbers.Real admits numpy scalars (float32 included), which training code produces.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgument(f"metric {key!r} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise InvalidArgument(f"metric {key!r} must be finite, got {value!r}")
    return v
