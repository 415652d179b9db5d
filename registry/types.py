"""Plain frozen records returned by the registry (no ORM objects leave the store)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .lazyfields import LazyJSON as _LazyJSON, RawJSON


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


@dataclass(frozen=True, repr=False)
class AdapterVersion:
    """One published adapter version of a task.

    metrics, tags, aliases, lineage, files and lint are decoded from their stored JSON on
    first access (they may be passed as values too).
    """

    task: str
    version: int
    adapter_id: str
    base_digest: str
    method: str
    status: str  # 'active' | 'deprecated'
    created_at: datetime
    metrics: dict[str, float] = _LazyJSON()
    tags: dict[str, str] = _LazyJSON()
    aliases: tuple[str, ...] = _LazyJSON(tuple)
    lineage: dict[str, Any] = _LazyJSON()
    files: dict[str, dict[str, Any]] = _LazyJSON()  # file name -> {"sha256": hex, "size": int}
    lint: tuple[str, ...] = _LazyJSON(tuple)  # warnings recorded at publish
    vllm_servable: bool

    def __repr__(self) -> str:  # compact: files and lineage are long
        return (f"AdapterVersion(task={self.task!r}, version={self.version}, "
                f"status={self.status!r}, method={self.method!r}, "
                f"adapter_id={self.adapter_id[:12]!r}..., aliases={self.aliases}, "
                f"metrics={self.metrics}, tags={self.tags}, "
                f"vllm_servable={self.vllm_servable})")

    @classmethod
    def _from_stored(cls, task, version, adapter_id, base_digest, method, status, created_at,
                     metrics, tags, aliases, lineage, files, lint,
                     vllm_servable) -> "AdapterVersion":
        """Fast path for rows read from the database (JSON text for the lazy fields):
        fills the instance dict directly instead of going through six descriptor calls."""
        obj = object.__new__(cls)
        obj.__dict__.update(
            task=task, version=version, adapter_id=adapter_id, base_digest=base_digest,
            method=method, status=status, created_at=created_at, vllm_servable=vllm_servable,
            _metrics=RawJSON(metrics), _tags=RawJSON(tags), _aliases=RawJSON(aliases),
            _lineage=RawJSON(lineage), _files=RawJSON(files), _lint=RawJSON(lint))
        return obj

    def __hash__(self) -> int:  # dict fields are not hashable; identity is (task, version, id)
        return hash((self.task, self.version, self.adapter_id))

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
class AliasMove:
    """One move of an alias: from_version None when it was created, to_version None when it
    was removed; actor is who moved it (None when not known)."""

    task: str
    alias: str
    from_version: int | None
    to_version: int | None
    actor: str | None
    moved_at: datetime

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
