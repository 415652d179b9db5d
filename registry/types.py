"""Plain frozen records returned by the registry (no ORM objects leave the store)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from datetime import datetime
from pathlib import Path
from typing import Any


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, datetime):
            v = v.isoformat()
        elif isinstance(v, tuple):
            v = list(v)
        elif isinstance(v, Path):
            v = str(v)
        out[k] = v
    return out


@dataclass(frozen=True)
class BaseModel:
    """A registered base model; `digest` identifies it, `name` is only a label."""

    digest: str
    name: str
    created_at: datetime
    module_shapes: dict[str, list[int]] = field(repr=False)
    config: dict[str, Any] = field(repr=False)

    def to_dict(self, *, shapes: bool = False) -> dict[str, Any]:
        d = _jsonable(asdict(self))
        if not shapes:
            d.pop("module_shapes")
            d["n_modules"] = len(self.module_shapes)
        return d


_scan = json.JSONDecoder().scan_once
_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def _loads(s: str) -> Any:
    return _scan(s, 0)[0]


@dataclass(frozen=True)
class AdapterVersion:
    """One published adapter version of a task.

    metrics, tags, aliases, lineage, files and lint are decoded from their stored JSON on
    first access: a page of 100 versions is mostly read for a few columns, and decoding
    every document up front would be most of the cost of a query. Build one from values
    with `AdapterVersion.build(...)`.
    """

    task: str
    version: int
    adapter_id: str
    base_digest: str
    method: str
    status: str  # 'active' | 'deprecated'
    created_at: datetime
    vllm_servable: bool
    # Canonical JSON of (metrics, tags, aliases, lineage, files, lint): equality and
    # hashing compare these, so two reads of the same version are equal.
    docs: tuple[str, str, str, str, str, str] = field(repr=False)

    @classmethod
    def build(cls, *, task: str, version: int, adapter_id: str, base_digest: str,
              method: str, status: str, created_at: datetime, vllm_servable: bool,
              metrics: dict[str, float], tags: dict[str, str], aliases: Iterable[str],
              lineage: dict[str, Any], files: dict[str, dict[str, Any]],
              lint: Iterable[str]) -> "AdapterVersion":
        return cls(task, version, adapter_id, base_digest, method, status, created_at,
                   vllm_servable, (_dumps(metrics), _dumps(tags), _dumps(sorted(aliases)),
                                   _dumps(lineage), _dumps(files), _dumps(list(lint))))

    @cached_property
    def metrics(self) -> dict[str, float]:
        return _loads(self.docs[0])

    @cached_property
    def tags(self) -> dict[str, str]:
        return _loads(self.docs[1])

    @cached_property
    def aliases(self) -> tuple[str, ...]:
        return tuple(_loads(self.docs[2]))

    @cached_property
    def lineage(self) -> dict[str, Any]:
        return _loads(self.docs[3])

    @cached_property
    def files(self) -> dict[str, dict[str, Any]]:
        """file name -> {"sha256": hex, "size": bytes}"""
        return _loads(self.docs[4])

    @cached_property
    def lint(self) -> tuple[str, ...]:
        """Warnings recorded at publish (vLLM incompatibilities, serving notes)."""
        return tuple(_loads(self.docs[5]))

    @property
    def name(self) -> str:
        """Directory / vLLM LoRA name used on export: '<task>-v<version>'."""
        return f"{self.task}-v{self.version}"

    def __repr__(self) -> str:
        return (f"AdapterVersion(task={self.task!r}, version={self.version}, "
                f"status={self.status!r}, method={self.method!r}, "
                f"adapter_id={self.adapter_id[:12]!r}, aliases={self.aliases}, "
                f"metrics={self.metrics}, tags={self.tags}, "
                f"vllm_servable={self.vllm_servable})")

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "version": self.version, "adapter_id": self.adapter_id,
                "base_digest": self.base_digest, "method": self.method,
                "status": self.status, "created_at": self.created_at.isoformat(),
                "metrics": self.metrics, "tags": self.tags, "aliases": list(self.aliases),
                "lineage": self.lineage, "files": self.files, "lint": list(self.lint),
                "vllm_servable": self.vllm_servable}


@dataclass(frozen=True)
class TaskInfo:
    """A task with its denormalised counters and current aliases."""

    name: str
    base_digest: str
    n_versions: int
    latest_version: int
    aliases: dict[str, int]
    created_at: datetime
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class Page:
    """One page of results; pass `next_page_token` back to get the next (None: last page)."""

    items: list[Any]
    next_page_token: str | None = None

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class ExportedAdapter:
    """An adapter written by export: a PEFT folder that vLLM loads as `name=path`."""

    name: str
    path: Path
    task: str
    version: int
    vllm_servable: bool

    @property
    def lora_module(self) -> str:
        """The argument for vLLM's --lora-modules."""
        return f"{self.name}={self.path}"

    def to_dict(self) -> dict[str, Any]:
        d = _jsonable(asdict(self))
        d["lora_module"] = self.lora_module
        return d
