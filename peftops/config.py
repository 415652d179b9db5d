"""Configuration: validated dataclasses with embedded defaults, optionally read from params.yaml.

The defaults below are the CPU demo budget; ``params.yaml`` (used by DVC) repeats them so a
change there is versioned with the data. ``load_params`` rejects unknown keys and wrong types
with a message naming the file and field.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peftops.errors import ConfigError

DEFAULT_HOME = ".peftops"


def state_home(home: str | os.PathLike | None = None) -> Path:
    """The single state directory (snapshot cache, MLflow store, registry, runs)."""
    return Path(home or os.environ.get("PEFTOPS_HOME") or DEFAULT_HOME).resolve()


def default_data_root() -> Path:
    """Where task data files live: $PEFTOPS_DATA_ROOT, else ../shared/data beside the checkout."""
    env = os.environ.get("PEFTOPS_DATA_ROOT")
    if env:
        return Path(env).resolve()
    return (Path.cwd().parent / "shared" / "data").resolve()


@dataclass(frozen=True)
class BaseConfig:
    """Which base model to pin. ``source='gguf'`` builds the snapshot from the PyPI package."""

    name: str = "gemma-3-270m"
    source: str = "gguf"
    # Optional: the digest this project is pinned to; a snapshot that differs is refused.
    expected_digest: str | None = None

    def __post_init__(self) -> None:
        if self.source not in ("gguf",):
            raise ConfigError("base.source", f"unknown source {self.source!r}; expected 'gguf'")


@dataclass(frozen=True)
class DataConfig:
    """Which task and how much of it to use."""

    task: str = "sst2"
    train_size: int = 480  # fixed-seed subset of the train split; 0 = all
    dev_size: int = 200  # first N dev examples in file order; 0 = all
    seed: int = 0
    max_length: int = 256  # prompt tokens; longer prompts are an error, never silently cut
    manifest: str | None = None  # path to a task manifest; None = the embedded one
    data_root: str | None = None  # where the manifest's relative paths point

    def __post_init__(self) -> None:
        for name in ("train_size", "dev_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name}", "must be >= 0")
        if self.max_length < 8:
            raise ConfigError("data.max_length", "must be >= 8")


@dataclass(frozen=True)
class TrainConfig:
    """The training loop's hyperparameters, shared by every method."""

    steps: int = 60
    batch_size: int = 8
    grad_accum: int = 1
    warmup_steps: int = 6
    schedule: str = "linear"  # linear | cosine | constant
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 0  # 0 = no intermediate checkpoints
    eval_batch_size: int = 16
    # Split a batch into forwards of at most this many (padded) tokens; the gradient is summed over
    # the pieces, so the update is the batch's. Bounds activation memory. 0 = one forward per batch.
    max_batch_tokens: int = 256
    # Recompute each layer's activations in the backward pass instead of keeping them: far less
    # memory for ~1/3 more compute (TRL's SFTTrainer does this by default).
    activation_checkpointing: bool = False
    # Numeric precision: fp32, bf16 (frozen base in bf16, trainable weights and optimizer state
    # in fp32, products in bf16), or auto (bf16 where the CPU or GPU multiplies it natively).
    precision: str = "fp32"  # auto | fp32 | bf16

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError("train.steps", "must be >= 1")
        if self.batch_size < 1:
            raise ConfigError("train.batch_size", "must be >= 1")
        if self.grad_accum < 1:
            raise ConfigError("train.grad_accum", "must be >= 1")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ConfigError("train.warmup_steps", f"must be in [0, steps={self.steps}]")
        if self.schedule not in ("linear", "cosine", "constant"):
            raise ConfigError("train.schedule", f"{self.schedule!r} is not one of linear, cosine, constant")
        if self.max_grad_norm <= 0:
            raise ConfigError("train.max_grad_norm", "must be > 0")
        if self.weight_decay < 0:
            raise ConfigError("train.weight_decay", "must be >= 0")
        if self.checkpoint_every < 0:
            raise ConfigError("train.checkpoint_every", "must be >= 0")
        if self.eval_batch_size < 1:
            raise ConfigError("train.eval_batch_size", "must be >= 1")
        if self.max_batch_tokens < 0:
            raise ConfigError("train.max_batch_tokens", "must be >= 0 (0 = no limit)")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError("train.precision", f"{self.precision!r} is not one of auto, fp32, bf16")


@dataclass(frozen=True)
class MergeConfig:
    """Merge-parity tolerance: max |logit difference| between adapter-applied and merged model."""

    tolerance: float = 1e-3
    probe_size: int = 64

    def __post_init__(self) -> None:
        if self.tolerance <= 0:
            raise ConfigError("merge.tolerance", "must be > 0")
        if self.probe_size < 1:
            raise ConfigError("merge.probe_size", "must be >= 1")


@dataclass(frozen=True)
class GateConfig:
    """Quality gate: an adapter gets ``alias`` only if its score is >= ``min_pct_of_full`` % of FFT's."""

    min_pct_of_full: float = 95.0
    alias: str = "production"
    baseline: str = "full"

    def __post_init__(self) -> None:
        if not 0 < self.min_pct_of_full <= 1000:
            raise ConfigError("gate.min_pct_of_full", "must be in (0, 1000]")
        if not self.alias:
            raise ConfigError("gate.alias", "must be a non-empty alias name")


@dataclass(frozen=True)
class PipelineParams:
    """Everything the main job needs; every field has an embedded default."""

    base: BaseConfig = field(default_factory=BaseConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    # Per-method settings (lr plus the method's own hyperparameters), validated by the method.
    methods: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "lora": {"lr": 5e-4, "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
            "full": {"lr": 2e-5},
        }
    )


def for_task(params: PipelineParams, task: str | None) -> PipelineParams:
    """``params`` with ``data.task`` set to ``task`` (unchanged when None; the budget and all else kept)."""
    return params if not task else dataclasses.replace(params, data=dataclasses.replace(params.data, task=task))


def _coerce(tp: Any, value: Any, fieldname: str, source: str | None) -> Any:
    """Check ``value`` against the annotation ``tp``; YAML gives ints for floats, allow that."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, fieldname, source)
            except ConfigError:
                continue
        raise ConfigError(fieldname, f"{value!r} has the wrong type", source)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if origin is dict and isinstance(value, dict):
        return value
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        (inner, *_) = typing.get_args(tp) or (object,)
        items = [v if inner is object else _coerce(inner, v, fieldname, source) for v in value]
        return tuple(items) if origin is tuple else items
    raise ConfigError(fieldname, f"expected {getattr(tp, '__name__', tp)}, got {value!r}", source)


def build_dataclass(cls: type, data: dict[str, Any] | None, prefix: str, source: str | None = None):
    """Build dataclass ``cls`` from a mapping, naming ``prefix.field`` in any error."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(prefix, f"expected a mapping, got {type(data).__name__}", source)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}" if prefix else unknown[0],
                          f"unknown key; valid keys are {', '.join(sorted(names))}", source)
    kwargs = {k: _coerce(hints[k], v, f"{prefix}.{k}" if prefix else k, source) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if source and not err.source:
            raise ConfigError(err.field, str(err).split(": ", 1)[-1], source) from None
        raise


def load_params(path: str | os.PathLike | None = None) -> PipelineParams:
    """Read ``params.yaml`` (or return the embedded defaults when ``path`` is None)."""
    if path is None:
        return PipelineParams()
    p = Path(path)
    if not p.exists():
        raise ConfigError("params", f"file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError("params", f"not valid YAML ({line.strip() or 'unknown line'}): {err}", str(p)) from None
    if not isinstance(raw, dict):
        raise ConfigError("params", "top level must be a mapping", str(p))
    known = {"base", "data", "train", "merge", "gate", "methods"}
    extra = sorted(set(raw) - known)
    if extra:
        raise ConfigError(extra[0], f"unknown section; valid sections are {', '.join(sorted(known))}", str(p))
    defaults = PipelineParams()
    methods = dict(defaults.methods)
    for name, cfg in (raw.get("methods") or {}).items():
        if not isinstance(cfg, dict):
            raise ConfigError(f"methods.{name}", "expected a mapping", str(p))
        methods[name] = cfg
    return PipelineParams(
        base=build_dataclass(BaseConfig, raw.get("base"), "base", str(p)),
        data=build_dataclass(DataConfig, raw.get("data"), "data", str(p)),
        train=build_dataclass(TrainConfig, raw.get("train"), "train", str(p)),
        merge=build_dataclass(MergeConfig, raw.get("merge"), "merge", str(p)),
        gate=build_dataclass(GateConfig, raw.get("gate"), "gate", str(p)),
        methods=methods,
    )


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain dict (for logging and JSON)."""
    return dataclasses.asdict(obj)
