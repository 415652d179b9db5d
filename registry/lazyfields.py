"""Fields of a frozen dataclass decoded from stored JSON text on first read.

What it buys: a page of 100 versions is mostly read for a few columns, and decoding every
JSON column of every row up front was most of the cost of a search. A reader can treat
these fields as plain dataclass fields: ``dataclasses.asdict`` and ``==`` see decoded values.
"""

from __future__ import annotations

from .jsonlimits import decode_stored


class RawJSON(str):
    """Stored JSON text of a field, decoded on first access."""

    __slots__ = ()


class LazyJSON:
    """Data descriptor: a RawJSON value is decoded (then converted) on first access and
    cached in the instance dict; any other value is kept as given."""

    def __init__(self, convert=None):
        self.convert = convert

    def __set_name__(self, owner, name):
        self.name, self.slot = name, "_" + name

    def __get__(self, obj, owner=None):
        if obj is None:  # dataclass asks for a default: there is none
            raise AttributeError(self.name)
        value = obj.__dict__[self.slot]
        if type(value) is RawJSON:
            value = decode_stored(value, self.name)
            if self.convert is not None:
                value = self.convert(value)
            obj.__dict__[self.slot] = value
        return value

    def __set__(self, obj, value):
        obj.__dict__[self.slot] = value

