"""Plain frozen records returned by the registry (no ORM objects leave the store)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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


@dataclass(frozen=True)
class AdapterVersion:
    """One published adapter version of a task."""

    task: str
    version: int
    adapter_id: str
    base_digest: str
    method: str
    status: str  # 'active' | 'deprecated'
    created_at: datetime
    metrics: dict[str, float]
    tags: dict[str, str]
    aliases: tuple[str, ...]
    lineage: dict[str, Any]
    files: dict[str, dict[str, Any]]  # file name -> {"sha256": hex, "size": bytes}
    lint: tuple[str, ...]  # warnings recorded at publish
    vllm_servable: bool

    @property
    def name(self) -> str:
        """Directory / vLLM LoRA name used on export: '<task>-v<version>'."""
        return f"{self.task}-v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


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
