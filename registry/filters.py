"""Parsing of the text forms of filters and JSON fields (shared by the CLI and the HTTP API)."""

from __future__ import annotations

from typing import Any

from .errors import InvalidArgument
from .jsonlimits import loads_bounded
from .query import METRIC_OPS


def parse_metric(text: str) -> tuple[str, str, float]:
    """'accuracy>=0.9' -> ("accuracy", ">=", 0.9)."""
    for op in sorted(METRIC_OPS, key=len, reverse=True):  # ">=" before ">"
        key, sep, value = text.partition(op)
        if sep:
            try:
                return key.strip(), op, float(value)
            except ValueError:
                break
    raise InvalidArgument(f"metric filter {text!r} must look like 'accuracy>=0.9'")


def parse_tag(text: str) -> tuple[str, str]:
    """'key=value' -> ("key", "value")."""
    key, sep, value = text.partition("=")
    if not sep:
        raise InvalidArgument(f"tag filter {text!r} must look like 'key=value'")
    return key, value


def json_field(text: str, what: str, kind: type) -> Any:
    """A JSON object or list given as text, within the registry's size and depth bounds."""
    value = loads_bounded(text, what)
    if not isinstance(value, kind):
        raise InvalidArgument(f"{what} must be a JSON {kind.__name__}")
    return value
