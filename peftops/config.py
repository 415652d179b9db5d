"""Configuration: frozen pydantic models with embedded defaults, optionally read from params.yaml.

The defaults below are the CPU demo budget; ``params.yaml`` (used by DVC) repeats them so a
change there is versioned with the data. Every config model (these sections, the method configs,
the task manifest entries, the forgetting set) derives from :class:`Config`: frozen, unknown keys
forbidden, no silent type conversion (an int is accepted for a float, nothing else).

Validation errors become one line in one place, :func:`validate`::

    validate(model_cls, data, prefix, source) -> model instance

which builds ``model_cls`` from the mapping ``data`` and turns pydantic's ``ValidationError``
into a :class:`~peftops.errors.ConfigError` naming ``source`` (the file), the dotted field
(``prefix`` + the field path, e.g. ``train.lr``), what is wrong and the rejected value; an
unknown key lists the valid ones. Building a model directly (``TrainConfig(steps=0)``) raises
the same error, named by the model's ``config_prefix``. Inside a validator, raise
:class:`FieldError` to blame another field of the same model (a cross-field check).

YAML is read by :func:`load_yaml` (or :func:`parse_yaml`) only: a document whose aliases expand
it past :data:`MAX_YAML_NODES` values is refused before anything is built (a few lines of
aliases can expand to gigabytes), and so are recursive aliases and files over :data:`MAX_YAML_BYTES`.
Aliases within that bound are fine (``yaml.safe_dump`` writes them for shared values).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from peftops.errors import ConfigError

DEFAULT_HOME = ".peftops"
MAX_YAML_BYTES = 8 * 1024 * 1024  # a params file or a task manifest is a few kB
MAX_YAML_NODES = 100_000  # values of a YAML document with its aliases expanded
_MAX_VALUE_REPR = 60  # a rejected value is shown cut to this many characters


def state_home(home: str | os.PathLike | None = None) -> Path:
    """The single state directory (snapshot cache, MLflow store, registry, runs): ``home``, else
    $PEFTOPS_HOME, else the nearest ``.peftops/`` in the current directory or a parent (as git
    finds its repository), else ``./.peftops`` (created by the commands that write state)."""
    from registry.config import state_dir

    return Path(home).resolve() if home else state_dir()


def default_data_root() -> Path:
    """Where task data files live: $PEFTOPS_DATA_ROOT, else ``../shared/data`` beside the project
    root (the directory holding the nearest ``.peftops/``, else the current directory)."""
    from registry.config import project_root

    env = os.environ.get("PEFTOPS_DATA_ROOT")
    if env:
        return Path(env).resolve()
    return (project_root().parent / "shared" / "data").resolve()


# ---------------------------------------------------------------- validation, in one place


class FieldError(ValueError):
    """Raised in a validator to blame ``field`` (dotted, relative to the model) with ``message``."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_REPR else text[:_MAX_VALUE_REPR] + "...'"


_TYPE_WORDS = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
               "string_type": "a string", "list_type": "a list", "tuple_type": "a list", "dict_type": "a mapping",
               "model_type": "a mapping", "dataclass_type": "a mapping", "none_required": "null"}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _field_path(model_cls: type, loc: tuple) -> tuple[list[str], type | None, bool]:
    """The dotted path of ``loc`` through nested models (union tags and item indexes dropped),
    the model class holding the last part, and whether ``loc`` ends inside a model."""
    path: list[str] = []
    cls: Any = model_cls
    for part in loc:
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            path.append(str(part))
            info = cls.model_fields.get(str(part))
            owner = cls
            cls = info.annotation if info is not None else None
            if isinstance(cls, type) and issubclass(cls, BaseModel):
                continue
            return path, owner, False
        break
    return path, cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None, True


def unknown_key_message(cls: type | None) -> str:
    """'unknown key; valid keys are ...' for config model ``cls`` (its ``key_word`` for 'key')."""
    word = getattr(cls, "key_word", "key")
    names = [n for n in (cls.model_fields if cls else ()) if n not in getattr(cls, "internal_fields", ())]
    return f"unknown {word}; valid {word}s are {', '.join(sorted(names))}"


def config_error(err: ValidationError, model_cls: type, prefix: str = "", source: str | None = None) -> ConfigError:
    """The first problem of ``err`` as one :class:`ConfigError` line (see :func:`validate`)."""
    errors = err.errors(include_url=False)
    order = {"extra_forbidden": 0, "missing": 1}
    first = min(errors, key=lambda e: order.get(e["type"], 2))  # stable: else pydantic's (field) order
    path, owner, at_model = _field_path(model_cls, tuple(first["loc"]))
    kind, ctx, value = first["type"], first.get("ctx") or {}, first.get("input")
    cause = ctx.get("error")
    show = True
    if isinstance(cause, FieldError):
        path = (path if at_model else path[:-1]) + [cause.field]
        message, show = str(cause), False
    elif isinstance(cause, Exception):
        message = str(cause)
        show = not isinstance(value, Mapping)
    elif kind == "extra_forbidden":
        message, show = unknown_key_message(owner), False
    elif kind == "missing":
        message, show = "required field is missing", False
    elif kind == "literal_error":
        choices = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        message, show = f"{_show(value)} is not one of {', '.join(choices)}", False
    elif kind == "string_too_short":
        message, show = "must be a non-empty string", False
    elif kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        message = f"must be {_BOUNDS[kind]} {bound}"
    elif kind in ("model_type", "dict_type", "dataclass_type"):
        message, show = f"expected a mapping, got {type(value).__name__}", False
    elif kind in _TYPE_WORDS:
        same = [e for e in errors if _field_path(model_cls, tuple(e["loc"]))[0] == path]
        message = "has the wrong type" if len(same) > 1 else f"must be {_TYPE_WORDS[kind]}"
    else:
        message = first["msg"]
    if show:
        message += f" (got {_show(value)})"
    dotted = ".".join(p for p in [prefix, *path] if p)
    return ConfigError(dotted or "config", message, source)


def validate(model_cls: type, data: Any, prefix: str = "", source: str | None = None):
    """Build ``model_cls`` from the mapping ``data`` (None = all defaults); any problem is one
    :class:`ConfigError` naming ``source``, ``prefix.field``, the problem and the bad value."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(prefix or "config", f"expected a mapping, got {type(data).__name__}", source)
    try:
        return model_cls.model_validate(dict(data))
    except ValidationError as err:
        raise config_error(err, model_cls, prefix, source) from None


class Config(BaseModel):
    """Base of every config model: frozen, unknown keys forbidden, strict types (int ok for float)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    config_prefix: ClassVar[str] = ""  # how errors name this model when it is built directly
    internal_fields: ClassVar[tuple[str, ...]] = ()  # set by code, not listed as valid keys
    key_word: ClassVar[str] = "key"  # what an error calls a key: "unknown key; valid keys are ..."

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise config_error(err, type(self), self.error_prefix(data)) from None

    # Nested models are validated by pydantic itself (not through this __init__), so an error
    # inside ``train`` of a params file is named ``train.<field>`` with the file, by validate().
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def error_prefix(cls, data: Mapping[str, Any]) -> str:
        return cls.config_prefix

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


# ---------------------------------------------------------------- YAML


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a document whose aliases expand it past
    :data:`MAX_YAML_NODES` nodes, or that refers to itself, before any object is built."""

    def compose_document(self):  # type: ignore[override]
        node = super().compose_document()
        sizes: dict[int, int] = {}

        def size(n, path: frozenset) -> int:
            if id(n) in path:
                raise yaml.MarkedYAMLError(problem="a YAML alias refers to a node that contains it",
                                           problem_mark=n.start_mark)
            if id(n) not in sizes:
                if isinstance(n, yaml.SequenceNode):
                    kids = n.value
                elif isinstance(n, yaml.MappingNode):
                    kids = [x for pair in n.value for x in pair]
                else:
                    kids = []
                inner = path | {id(n)}
                total = 1
                for kid in kids:
                    total += size(kid, inner)
                    if total > MAX_YAML_NODES:
                        raise yaml.MarkedYAMLError(
                            problem=f"YAML aliases expand this document past {MAX_YAML_NODES:,} values",
                            problem_mark=kid.start_mark)
                sizes[id(n)] = total
            return sizes[id(n)]

        if node is not None:
            size(node, frozenset())
        return node


def load_yaml(path: str | os.PathLike, what: str) -> Any:
    """Parse a YAML config file (``what`` names it in errors: 'params', 'manifest'); an alias
    bomb, a file over :data:`MAX_YAML_BYTES`, a directory or an unreadable file is one line."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            data = fh.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(what, f"file not found: {p}") from None
    except IsADirectoryError:
        raise ConfigError(what, f"{p} is a directory, not a file") from None
    except OSError as err:
        raise ConfigError(what, f"cannot read {p}: {err.strerror or err}") from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(what, f"file is over {MAX_YAML_BYTES // (1024 * 1024)} MB", str(p))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(what, f"not UTF-8 text (byte {err.start})", str(p)) from None
    return parse_yaml(text, what, str(p))


def parse_yaml(text: str, what: str, source: str | None = None) -> Any:
    """Parse YAML text with the rules of :func:`load_yaml` (alias expansion bounded)."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f"line {mark.line + 1}" if mark else "unknown line"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(what, f"not valid YAML ({line}): {problem}", source) from None


# ---------------------------------------------------------------- the sections of params.yaml

PositiveInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]


class BaseConfig(Config):
    """Which base model to pin. ``source='gguf'`` builds the snapshot from the PyPI package."""

    config_prefix: ClassVar[str] = "base"
    name: str = "gemma-3-270m"
    source: Literal["gguf"] = "gguf"
    # Optional: the digest this project is pinned to; a snapshot that differs is refused.
    expected_digest: str | None = None


class DataConfig(Config):
    """Which task and how much of it to use."""

    config_prefix: ClassVar[str] = "data"
    task: str = "sst2"
    train_size: NonNegInt = 480  # fixed-seed subset of the train split; 0 = all
    dev_size: NonNegInt = 200  # first N dev examples in file order; 0 = all
    seed: int = 0
    max_length: Annotated[int, Field(ge=8)] = 256  # prompt tokens; longer prompts are an error, never cut
    manifest: str | None = None  # path to a task manifest; None = the embedded one
    data_root: str | None = None  # where the manifest's relative paths point


class TrainConfig(Config):
    """The training loop's hyperparameters, shared by every method."""

    config_prefix: ClassVar[str] = "train"
    steps: PositiveInt = 60
    batch_size: PositiveInt = 8
    grad_accum: PositiveInt = 1
    warmup_steps: NonNegInt = 6
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    seed: int = 0
    checkpoint_every: NonNegInt = 0  # 0 = no intermediate checkpoints
    eval_batch_size: PositiveInt = 16
    # Split a batch into forwards of at most this many (padded) tokens; the gradient is summed over
    # the pieces, so the update is the batch's. Bounds activation memory. 0 = one forward per batch.
    max_batch_tokens: NonNegInt = 256
    # Recompute each layer's activations in the backward pass instead of keeping them: far less
    # memory for ~1/3 more compute (TRL's SFTTrainer does this by default).
    activation_checkpointing: bool = False
    # Numeric precision: fp32, bf16 (frozen base in bf16, trainable weights and optimizer state
    # in fp32, products in bf16), or auto (bf16 where the CPU or GPU multiplies it natively).
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    @model_validator(mode="after")
    def _warmup_within_run(self) -> TrainConfig:
        if self.warmup_steps > self.steps:
            raise FieldError("warmup_steps", f"must be in [0, steps={self.steps}] (got {self.warmup_steps})")
        return self


class MergeConfig(Config):
    """Merge-parity tolerance: max |logit difference| between adapter-applied and merged model."""

    config_prefix: ClassVar[str] = "merge"
    tolerance: Annotated[float, Field(gt=0)] = 1e-3
    probe_size: PositiveInt = 64


class GateConfig(Config):
    """Quality gate: an adapter gets ``alias`` only if its score is >= ``min_pct_of_full`` % of FFT's."""

    config_prefix: ClassVar[str] = "gate"
    min_pct_of_full: Annotated[float, Field(gt=0, le=1000)] = 95.0
    alias: Annotated[str, Field(min_length=1)] = "production"
    baseline: str = "full"


class FleetConfig(Config):
    """How a fleet runs its tasks (``fleet`` in params.yaml).

    The fleet section of the parameters: which engine runs the tasks and what each task asks for.
    
    ``runner: local`` runs the tasks in threads of the flow's process (no Ray needed); ``runner: ray``
    runs each task's pipeline in a Ray worker process of the cluster at ``address`` (``auto``: the
    ``RAY_ADDRESS`` environment variable or a cluster started on this machine; empty: a private
    local one), with ``num_cpus`` / ``num_gpus`` / ``memory_gb`` per task. A worker that dies
    mid-task is replaced and the task re-run up to ``retries`` times; its training resumes from its
    last checkpoint when ``train.checkpoint_every`` > 0.
    """

    config_prefix: ClassVar[str] = "fleet"
    runner: Literal["local", "ray"] = "local"
    address: str = "auto"  # Ray cluster address (host:port, ray://host:port, auto, or "" for a private one)
    num_cpus: Annotated[float, Field(gt=0)] = 1.0  # per task; also the task's torch threads
    num_gpus: Annotated[float, Field(ge=0)] = 0.0
    memory_gb: Annotated[float, Field(ge=0)] = 0.0  # per task, 0 = no memory request
    retries: NonNegInt = 2  # re-runs of a task whose worker died

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.num_cpus))

    def remote_options(self) -> dict[str, Any]:
        """The Ray task options of one fleet task (system failures retried, task errors not)."""
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "max_retries": self.retries, "retry_exceptions": False}
        if self.num_gpus:
            opts["num_gpus"] = self.num_gpus
        if self.memory_gb:
            opts["memory"] = int(self.memory_gb * 1024 ** 3)
        return opts


class TrackingConfig(Config):
    """MLflow tracking (``tracking`` in params.yaml).

    ``mirror_registry``: after each publish, make MLflow's Model Registry match ours for the
    task (registered model ``peftops-<task>``, one model version per registry version, aliases
    as ours; ``peftops mlflow-mirror`` does the same at any time). Our registry stays the source
    of truth: a failed mirror is a warning, never a failed publish.
    """

    config_prefix: ClassVar[str] = "tracking"
    mirror_registry: bool = False


def fleet_config(value: Any = None, **overrides: Any) -> FleetConfig:
    """A ``FleetConfig`` from a mapping (or an existing one) plus non-None overrides (the CLI's)."""
    base = value.model_dump() if isinstance(value, FleetConfig) else dict(value or {})
    base.update({k: v for k, v in overrides.items() if v is not None})
    return validate(FleetConfig, base, "fleet")


class PipelineParams(Config):
    """Everything the main job needs; every field has an embedded default.

    ``methods`` maps a method name to its settings in params.yaml (``lr`` plus the method's own
    hyperparameters). They are validated by the method's config (``make_config``), which is also
    where every default of a method lives: an empty mapping means the method's defaults.
    """

    base: BaseConfig = Field(default_factory=BaseConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    methods: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"lora": {}, "full": {}})


def for_task(params: PipelineParams, task: str | None) -> PipelineParams:
    """``params`` with ``data.task`` set to ``task`` (unchanged when None; the budget and all else kept)."""
    return params if not task else params.model_copy(update={"data": params.data.model_copy(update={"task": task})})


def load_params(path: str | os.PathLike | None = None) -> PipelineParams:
    """Read ``params.yaml`` (or return the embedded defaults when ``path`` is None)."""
    if path is None:
        return PipelineParams()
    p = Path(path)
    raw = load_yaml(p, "params")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("params", "top level must be a mapping", str(p))
    methods = dict(PipelineParams().methods)
    given = raw.get("methods")
    if given is not None and not isinstance(given, dict):
        raise ConfigError("methods", f"expected a mapping, got {type(given).__name__}", str(p))
    for name, cfg in (given or {}).items():
        if cfg is not None and not isinstance(cfg, dict):
            raise ConfigError(f"methods.{name}", f"expected a mapping, got {type(cfg).__name__}", str(p))
        methods[str(name)] = dict(cfg or {})
    return validate(PipelineParams, {**raw, "methods": methods}, "", str(p))


def to_dict(obj: Any) -> dict[str, Any]:
    """A config model (or a dataclass) as a plain dict (for logging, JSON and cache keys)."""
    if isinstance(obj, BaseModel):
        return obj.model_dump()
    return dataclasses.asdict(obj)
