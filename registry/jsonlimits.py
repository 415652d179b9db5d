"""Bounds on the JSON documents the registry stores (lineage, tags, metrics, adapter configs).

Deeply nested JSON is cheap to send and expensive to handle: Python's json, dataclasses,
pydantic and rich all recurse, so one document nested a thousand levels deep breaks every
later read of it. Publish refuses documents over these bounds; reads of documents stored
before the bounds existed go through ``decode_stored``, which never raises.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import InvalidArgument

MAX_DEPTH = 32  # nesting levels of objects and arrays in one field
MAX_FIELD_BYTES = 256 * 1024  # canonical JSON text of lineage, tags or metrics
MAX_CONFIG_BYTES = 1024 * 1024  # adapter_config.json

_decode = json.JSONDecoder().raw_decode


def depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a JSON value (a scalar is 0), counted without recursion; stops
    counting once it passes ``limit``."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = v.values()
        elif not isinstance(v, (list, tuple)):
            continue
        d += 1
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        stack.extend((x, d) for x in v if isinstance(x, (dict, list, tuple)))
    return deepest


def check_value(value: Any, field: str, *, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a value nested deeper than ``max_depth`` levels, naming the field."""
    if depth(value, max_depth) > max_depth:
        raise InvalidArgument(f"{field} is nested deeper than {max_depth} levels "
                              f"(the limit is {max_depth})")


def check_text(text: str, field: str, *, max_bytes: int = MAX_FIELD_BYTES) -> str:
    """Refuse a field's JSON text over ``max_bytes``, naming the field."""
    if len(text) > max_bytes:
        raise InvalidArgument(f"{field} is {len(text):,} bytes of JSON; the limit is "
                              f"{max_bytes:,}")
    return text


def loads_bounded(raw: bytes | str, field: str, *, max_bytes: int = MAX_FIELD_BYTES,
                  max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON from an untrusted source within the size and depth bounds."""
    if len(raw) > max_bytes:
        raise InvalidArgument(f"{field} is {len(raw):,} bytes; the limit is {max_bytes:,}")
    try:
        value = json.loads(raw)
    except RecursionError:
        raise InvalidArgument(f"{field} is nested deeper than {max_depth} levels "
                              f"(the limit is {max_depth})") from None
    except ValueError as e:
        raise InvalidArgument(f"{field} must be JSON: {e}") from None
    check_value(value, field, max_depth=max_depth)
    return value


def unreadable(field: str) -> dict[str, str]:
    """What a read shows in place of a stored document over the bounds."""
    return {"unreadable": f"the stored {field} is nested deeper than {MAX_DEPTH} levels "
                          "and is not shown"}


def decode_stored(text: str, field: str) -> Any:
    """Decode a field's stored JSON text; a document over the depth bound (stored before
    the bound existed) decodes to ``unreadable(field)`` instead of failing every read."""
    try:
        value = _decode(text)[0]
    except RecursionError:
        return unreadable(field)
    # Counting brackets is C speed; the walk runs only when there could be that many levels.
    if text.count("{") + text.count("[") > MAX_DEPTH and depth(value) > MAX_DEPTH:
        return unreadable(field)
    return value
