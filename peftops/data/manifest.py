"""The task manifest: which files make a task, how their fields fill the prompt template, the
label verbalizers (``kind: classification``, the default) or the response (``kind: generation``,
see ``docs/generation.md``) and the metric. ``peftops/data/tasks.yaml`` ships the GLUE tasks and two
generation tasks; a user's manifest (``data.manifest`` in params.yaml, or ``--manifest``) extends
them: its entries are added, and one with a built-in's name replaces that built-in. Every entry is
validated (:class:`TaskSpec`); an
error names the manifest, the entry and the field.

Paths: an absolute ``train``/``dev`` path is used as is; a relative one is resolved against the
data root and must stay inside it (``../`` that climbs out is refused; see :func:`data_path`).
"""

from __future__ import annotations

import hashlib
import os
import string
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from peftops.config import Config, FieldError, default_data_root, load_yaml, unknown_key_message, validate
from peftops.errors import ConfigError, DataError

EMBEDDED_MANIFEST = Path(__file__).with_name("tasks.yaml")
FORMATS = ("tsv", "csv", "jsonl", "parquet")
METRICS = ("accuracy", "f1", "matthews")
GENERATION_METRICS = ("rougeL", "token_f1", "exact_match")
KINDS = ("classification", "generation")
ROLES = ("system", "user", "assistant")
# Keys of a generation entry: absent from a classification entry's ``entry()`` (so its data
# digest is what it was before generation tasks existed).
GENERATION_KEYS = ("kind", "prompt_template", "response_template", "response_field", "messages_field",
                   "optional_fields", "where", "truncate", "max_new_tokens", "stop")


def data_path(rel: str | os.PathLike, data_root: str | os.PathLike | None = None) -> Path:
    """Where a manifest (or config) path points: an absolute path as is; a relative one under the
    data root (``data_root``, else :func:`~peftops.config.default_data_root`), which it must not
    climb out of (checked on the path's text, so symlinks inside the root may point anywhere)."""
    path = Path(rel)
    if path.is_absolute():
        return path
    root = Path(data_root) if data_root else default_data_root()
    joined = Path(os.path.normpath(root / path))
    if os.path.commonpath([os.path.normpath(root), joined]) != os.path.normpath(root):
        raise DataError(str(rel), f"a relative data path must stay inside the data root {root}; "
                        "give an absolute path to use a file elsewhere")
    return joined


def _column(where: str, col: Any) -> str | int:
    if isinstance(col, bool) or not isinstance(col, (str, int)) or (isinstance(col, int) and col < 0):
        raise FieldError(where, f"{col!r} must be a column name or a 0-based column index")
    return col


class TaskSpec(Config):
    """One manifest entry, validated."""

    internal_fields: ClassVar[tuple[str, ...]] = ("name", "source")
    key_word: ClassVar[str] = "field"
    name: str
    train: str
    dev: str
    kind: Literal["classification", "generation"] = "classification"
    template: str = ""  # classification: the prompt
    labels: dict[str, str] = {}  # raw label value (as text) -> verbalizer continuation
    label_field: str | int | None = None
    fields: dict[str, str | int] = {}  # template placeholder -> column name (or 0-based index, or a.0.b path)
    format: Literal["tsv", "csv", "jsonl", "parquet"] = "tsv"
    header: bool = True
    metric: Literal["accuracy", "f1", "matthews", "rougeL", "token_f1", "exact_match"] = "accuracy"
    metrics: tuple[str, ...] = ()
    # generation (see docs/generation.md)
    prompt_template: str = ""
    response_template: str = ""
    response_field: str | int | None = None
    messages_field: str | None = None  # a column holding a chat: [{"role": ..., "content": ...}, ...]
    optional_fields: tuple[str, ...] = ()  # placeholders that may be empty (their template line is then left out)
    where: dict[str, str] = {}  # keep only rows whose column (as text) equals the value
    truncate: Literal["none", "prompt_left"] = "none"
    max_new_tokens: Annotated[int, Field(ge=1)] = 128
    stop: tuple[str, ...] = ()
    max_length: int | None = None
    description: str = ""
    source: str = ""  # manifest file this entry came from

    @classmethod
    def error_prefix(cls, data: Any) -> str:
        return f"tasks.{data.get('name', '?')}"

    @field_validator("train", "dev", mode="before")
    @classmethod
    def _path(cls, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("must be a file path (relative to the data root, or absolute)")
        if "\x00" in value:
            raise ValueError("must not contain a NUL byte")
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, labels: Any) -> dict[str, str]:
        if not isinstance(labels, dict) or len(labels) < 2:
            raise ValueError("must map at least two label values to verbalizers")
        for k in labels:
            if isinstance(k, bool):  # YAML 1.1 reads bare yes/no/true/false as booleans
                raise ValueError(f"label value {k!r} was read as a boolean; quote it "
                                 "(e.g. \"yes\": \" yes\") so it matches the text in the file")
            if not isinstance(k, (str, int)):
                raise ValueError(f"label value {k!r} must be text or an integer")
            if str(k) != str(k).strip() or not str(k):
                raise ValueError(f"label value {str(k)!r} is empty or has surrounding whitespace; labels in "
                                 "data files are compared with surrounding whitespace removed")
        labels = {str(k): v for k, v in labels.items()}
        for k, v in labels.items():
            if not isinstance(v, str) or not v.strip():
                raise FieldError(f"labels.{k}", "verbalizer must be a non-empty string")
        if len(set(labels.values())) != len(labels):
            raise ValueError("verbalizers must be distinct")
        return labels

    @field_validator("fields", mode="before")
    @classmethod
    def _fields(cls, fields_: Any) -> dict[str, str | int]:
        if not isinstance(fields_, dict):
            raise ValueError("must map template placeholders to columns")
        return {str(k): _column(f"fields.{k}", v) for k, v in fields_.items()}

    @field_validator("label_field", "response_field", mode="before")
    @classmethod
    def _label_field(cls, col: Any, info: Any) -> str | int | None:
        return None if col is None else _column(info.field_name, col)

    @field_validator("template", "prompt_template", "response_template", mode="before")
    @classmethod
    def _template(cls, template: Any) -> str:
        if not isinstance(template, str):
            raise ValueError("must be a string")
        try:
            list(string.Formatter().parse(template))
        except ValueError as err:
            raise ValueError(f"bad placeholder syntax: {err}") from None
        return template

    @field_validator("metrics", mode="before")
    @classmethod
    def _metrics(cls, extra: Any) -> tuple[str, ...]:
        extra = () if extra is None else extra
        if isinstance(extra, str) or not isinstance(extra, (list, tuple)):
            raise ValueError("must be a list of metric names")
        for m in extra:
            if m not in METRICS + GENERATION_METRICS:
                raise ValueError(f"{m!r} is not one of {', '.join(METRICS + GENERATION_METRICS)}")
        return tuple(extra)

    @field_validator("stop", "optional_fields", mode="before")
    @classmethod
    def _strings(cls, value: Any) -> tuple[str, ...]:
        value = () if value is None else value
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ValueError("must be a list of strings")
        if any(not isinstance(v, str) or not v for v in value):
            raise ValueError("every entry must be a non-empty string")
        return tuple(value)

    @field_validator("where", mode="before")
    @classmethod
    def _where(cls, value: Any) -> dict[str, str]:
        if not isinstance(value, dict) or any(not isinstance(v, (str, int)) or isinstance(v, bool)
                                              for v in value.values()):
            raise ValueError("must map column names to the text (or integer) a kept row has there")
        return {str(k): str(v) for k, v in value.items()}

    @field_validator("max_length", mode="before")
    @classmethod
    def _max_length(cls, value: Any) -> int | None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 8):
            raise ValueError("must be an integer >= 8")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        if self.kind == "generation":
            return self._generation()
        for key in GENERATION_KEYS[1:]:
            if getattr(self, key) != type(self).model_fields[key].default:
                raise FieldError(key, "is a generation field; set kind: generation to use it")
        if self.metric in GENERATION_METRICS or set(self.metrics) & set(GENERATION_METRICS):
            raise FieldError("metric", f"a classification task scores with one of {', '.join(METRICS)}")
        if not self.template:
            raise FieldError("template", "required field is missing (a classification task's prompt template)")
        if len(self.labels) < 2:
            raise FieldError("labels", "required field is missing (at least two label values mapped to verbalizers)")
        if self.label_field is None:
            raise FieldError("label_field", "required field is missing (the column of the label)")
        if not self.fields:
            raise FieldError("fields", "required field is missing (template placeholders mapped to columns)")
        placeholders = {p for _, p, _, _ in string.Formatter().parse(self.template) if p is not None}
        missing = placeholders - set(self.fields)
        if missing:
            raise FieldError("template", f"placeholder {{{sorted(missing)[0]}}} has no entry in 'fields'")
        for where, col in [(f"fields.{k}", v) for k, v in self.fields.items()] + [("label_field", self.label_field)]:
            if self.format == "jsonl" and not isinstance(col, str):
                raise FieldError(where, f"column {col!r} must be a key name: JSON lines are objects")
            if not self.header and self.format != "jsonl" and not isinstance(col, int):
                raise FieldError(where, f"column {col!r} must be a 0-based index when header is false")
        if len(self.labels) != 2 and "f1" in (self.metric, *self.metrics):
            raise FieldError("metric" if self.metric == "f1" else "metrics",
                             f"'f1' (of the second label) needs exactly two labels; this task has {len(self.labels)}")
        return self

    def _generation(self) -> TaskSpec:
        if self.template or self.labels or self.label_field is not None:
            bad = "template" if self.template else "labels" if self.labels else "label_field"
            raise FieldError(bad, "is a classification field; a generation task uses prompt_template and "
                             "response_template / response_field, or messages_field")
        if self.metric in METRICS or set(self.metrics) & set(METRICS):
            raise FieldError("metric", f"a generation task scores with one of {', '.join(GENERATION_METRICS)}")
        if self.messages_field is not None:
            for key in ("prompt_template", "response_template", "response_field"):
                if getattr(self, key):
                    raise FieldError(key, "a chat task (messages_field) is rendered by the tokenizer's chat "
                                     "template; it takes no templates")
            if self.format in ("tsv", "csv"):
                raise FieldError("messages_field", "a chat needs JSON lines or Parquet (a list per row)")
            return self
        if not self.prompt_template:
            raise FieldError("prompt_template", "a generation task needs prompt_template (or messages_field)")
        if bool(self.response_template) == (self.response_field is not None):
            raise FieldError("response_template", "give exactly one of response_template and response_field")
        used = set()
        for t in (self.prompt_template, self.response_template):
            used |= {p for _, p, _, _ in string.Formatter().parse(t) if p is not None}
        missing = used - set(self.fields)
        if missing:
            raise FieldError("prompt_template", f"placeholder {{{sorted(missing)[0]}}} has no entry in 'fields'")
        for k in self.optional_fields:
            if k not in self.fields:
                raise FieldError("optional_fields", f"{k!r} is not a placeholder in 'fields'")
        cols = [(f"fields.{k}", v) for k, v in self.fields.items()]
        if self.response_field is not None:
            cols.append(("response_field", self.response_field))
        for where, col in cols:
            if self.format in ("jsonl", "parquet") and not isinstance(col, str):
                raise FieldError(where, f"column {col!r} must be a key name: {self.format} rows are objects")
            if not self.header and self.format in ("tsv", "csv") and not isinstance(col, int):
                raise FieldError(where, f"column {col!r} must be a 0-based index when header is false")
        return self

    @property
    def verbalizers(self) -> list[str]:
        return list(self.labels.values())

    @property
    def label_values(self) -> list[str]:
        return list(self.labels.keys())

    def entry(self) -> dict[str, Any]:
        """The manifest entry's values that shape a prepared split (not where it came from)."""
        d = {k: v for k, v in self.to_dict().items() if k not in ("source", "description")}
        if self.kind == "classification":
            d = {k: v for k, v in d.items() if k not in GENERATION_KEYS}
        return d


def parse_task(name: str, entry: Any, source: str) -> TaskSpec:
    """Validate one manifest entry; errors name the manifest, the entry and the field."""
    prefix = f"tasks.{name}"
    if not isinstance(entry, dict):
        raise ConfigError(prefix, "expected a mapping", source)
    for key in TaskSpec.internal_fields:
        if key in entry:
            raise ConfigError(f"{prefix}.{key}", unknown_key_message(TaskSpec), source)
    return validate(TaskSpec, {**entry, "name": str(name), "source": source}, prefix, source)


# Validated manifests by path and content digest: every stage of every task looks its entry up,
# and a fleet's manifest holds every task, so re-parsing it per lookup made a task's cost grow with
# the fleet (a 1,000-entry manifest parsed eight times per task). Reading and hashing the bytes
# is cheap; an edited file is parsed again.
_PARSED: dict[tuple[str, str], dict[str, TaskSpec]] = {}
_PARSED_MAX = 8


def load_manifest(path: str | Path | None = None) -> dict[str, TaskSpec]:
    """Read and validate a task manifest (the embedded one when ``path`` is None)."""
    p = Path(path) if path else EMBEDDED_MANIFEST
    try:
        key: tuple[str, str] | None = (str(p.resolve()), hashlib.sha256(p.read_bytes()).hexdigest())
    except OSError:
        key = None  # load_yaml names the missing or unreadable file
    if key is not None and key in _PARSED:
        return dict(_PARSED[key])  # TaskSpec is frozen; the dict is the caller's to extend
    raw = load_yaml(p, "manifest")
    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), dict):
        raise ConfigError("tasks", "the manifest needs a top-level 'tasks' mapping", str(p))
    tasks = {str(name): parse_task(str(name), entry, str(p)) for name, entry in raw["tasks"].items()}
    if key is not None:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.pop(next(iter(_PARSED)))
        _PARSED[key] = tasks
    return dict(tasks)


def all_tasks(manifest: str | Path | None = None) -> dict[str, TaskSpec]:
    """The built-in tasks extended by a user's manifest: its entries are added, and an entry with a
    built-in's name replaces that built-in (the whole entry, not field by field)."""
    tasks = load_manifest(None)
    if manifest and Path(manifest).resolve() != EMBEDDED_MANIFEST.resolve():
        tasks.update(load_manifest(manifest))
    return tasks


def get_task(name: str, manifest: str | Path | None = None) -> TaskSpec:
    """Look up one task by name among the built-in tasks and the user's manifest's (which
    extends them); an unknown name lists the known ones."""
    tasks = all_tasks(manifest)
    if name not in tasks:
        where = f"the built-in tasks and {manifest}" if manifest else "the built-in tasks"
        raise ConfigError("data.task", f"unknown task {name!r}; {where} have {', '.join(sorted(tasks))}")
    return tasks[name]
