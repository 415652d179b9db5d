"""The HTTP API's records: response schemas derived from the registry's own dataclasses
(registry/types.py), so each record's fields are defined once; request bodies."""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any

from pydantic import BaseModel as Schema, Field, create_model

from ..types import AdapterVersion, AliasMove, BaseModel, TaskInfo

MAX_VERSION = 2**63 - 1  # versions are 64-bit integers in the database


def schema_of(record: type, name: str, *, exclude: tuple[str, ...] = (),
              extra: dict[str, Any] | None = None) -> type[Schema]:
    """A pydantic model with the fields (and types) of the dataclass ``record``."""
    hints = typing.get_type_hints(record)
    fields: dict[str, Any] = {f.name: (hints[f.name], ...) for f in dataclasses.fields(record)
                              if f.name not in exclude}
    fields.update(extra or {})
    return create_model(name, __doc__=record.__doc__, **fields)


VersionOut = schema_of(AdapterVersion, "VersionOut")
TaskOut = schema_of(TaskInfo, "TaskOut")
AliasMoveOut = schema_of(AliasMove, "AliasMoveOut")
BaseOut = schema_of(BaseModel, "BaseOut", exclude=("module_shapes", "config"),
                    extra={"n_modules": (int, ...)})


def page_of(item: type[Schema], name: str) -> type[Schema]:
    return create_model(name, items=(list[item], ...), next_page_token=(str | None, None))


VersionPage = page_of(VersionOut, "VersionPage")
TaskPage = page_of(TaskOut, "TaskPage")


class ErrorOut(Schema):
    """Every error response: the error's class name and one line saying what to do."""

    error: str
    detail: str
    problems: list[str] | None = None
    known_metrics: list[str] | None = None  # a search by an unknown metric: the names recorded


class BaseIn(Schema):
    digest: str
    name: str = "gemma-3-270m"
    module_shapes: dict[str, list[int]]
    config: dict[str, Any] = Field(default_factory=dict)


class AliasIn(Schema):
    version: int = Field(ge=1, le=MAX_VERSION)


class TagIn(Schema):
    value: str


class ExportIn(Schema):
    items: list[tuple[str, Annotated[int, Field(ge=1, le=MAX_VERSION)]]] = Field(
        min_length=1, max_length=1000)
    base_digest: str | None = None


def version_out(v: AdapterVersion) -> Schema:
    return VersionOut(**v.to_dict())
