"""The task manifest: which files make a task, how their fields fill the prompt template, the
label verbalizers and the metric. ``peftops/data/tasks.yaml`` ships the GLUE tasks; a user's
manifest is ``data.manifest`` in params.yaml. Every entry is validated; an error names the
manifest, the entry and the field."""

from __future__ import annotations

import csv
import io
import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peftops.config import DataConfig, default_data_root
from peftops.digest import canonical_json, file_sha256, text_sha256
from peftops.errors import ConfigError, DataError
from peftops.fsutil import write_text_atomic

EMBEDDED_MANIFEST = Path(__file__).with_name("tasks.yaml")
FORMATS = ("tsv", "csv", "jsonl")
METRICS = ("accuracy", "f1", "matthews")


@dataclass(frozen=True)
class TaskSpec:
    """One manifest entry, validated."""

    name: str
    train: str
    dev: str
    template: str
    labels: dict[str, str]  # raw label value (as text) -> verbalizer continuation
    label_field: str | int
    fields: dict[str, str | int]  # template placeholder -> column name (or 0-based index)
    format: str = "tsv"
    header: bool = True
    metric: str = "accuracy"
    metrics: tuple[str, ...] = ()
    max_length: int | None = None
    description: str = ""
    source: str = ""  # manifest file this entry came from

    @property
    def verbalizers(self) -> list[str]:
        return list(self.labels.values())

    @property
    def label_values(self) -> list[str]:
        return list(self.labels.keys())


def _entry_error(source: str, task: str, fieldname: str, message: str) -> ConfigError:
    return ConfigError(f"tasks.{task}.{fieldname}", message, source)


def parse_task(name: str, entry: dict[str, Any], source: str) -> TaskSpec:
    """Validate one manifest entry; errors name the manifest, the entry and the field."""
    if not isinstance(entry, dict):
        raise _entry_error(source, name, "", "expected a mapping")
    allowed = {f for f in TaskSpec.__dataclass_fields__ if f not in ("name", "source")}
    for key in entry:
        if key not in allowed:
            raise _entry_error(source, name, key, f"unknown field; valid fields are {', '.join(sorted(allowed))}")
    for req in ("train", "dev", "template", "labels", "label_field", "fields"):
        if req not in entry:
            raise _entry_error(source, name, req, "required field is missing")
    for key in ("train", "dev"):
        if not isinstance(entry[key], str) or not entry[key].strip():
            raise _entry_error(source, name, key, "must be a file path (relative to the data root, or absolute)")
    fmt = entry.get("format", "tsv")
    if fmt not in FORMATS:
        raise _entry_error(source, name, "format", f"{fmt!r} is not one of {', '.join(FORMATS)}")
    header = entry.get("header", True)
    if not isinstance(header, bool):
        raise _entry_error(source, name, "header", "must be true or false")
    labels = entry["labels"]
    if not isinstance(labels, dict) or len(labels) < 2:
        raise _entry_error(source, name, "labels", "must map at least two label values to verbalizers")
    for k in labels:
        if isinstance(k, bool):  # YAML 1.1 reads bare yes/no/true/false as booleans
            raise _entry_error(source, name, "labels", f"label value {k!r} was read as a boolean; quote it "
                               "(e.g. \"yes\": \" yes\") so it matches the text in the file")
    labels = {str(k): v for k, v in labels.items()}
    for k, v in labels.items():
        if not isinstance(v, str) or not v.strip():
            raise _entry_error(source, name, f"labels.{k}", "verbalizer must be a non-empty string")
    if len(set(labels.values())) != len(labels):
        raise _entry_error(source, name, "labels", "verbalizers must be distinct")
    fields_ = entry["fields"]
    if not isinstance(fields_, dict) or not fields_:
        raise _entry_error(source, name, "fields", "must map template placeholders to columns")
    template = entry["template"]
    if not isinstance(template, str):
        raise _entry_error(source, name, "template", "must be a string")
    try:
        placeholders = {p for _, p, _, _ in string.Formatter().parse(template) if p is not None}
    except ValueError as err:
        raise _entry_error(source, name, "template", f"bad placeholder syntax: {err}") from None
    missing = placeholders - set(fields_)
    if missing:
        raise _entry_error(source, name, "template", f"placeholder {{{sorted(missing)[0]}}} has no entry in 'fields'")
    cols = [(f"fields.{k}", v) for k, v in fields_.items()] + [("label_field", entry["label_field"])]
    for where, col in cols:
        if isinstance(col, bool) or not isinstance(col, (str, int)) or (isinstance(col, int) and col < 0):
            raise _entry_error(source, name, where, f"{col!r} must be a column name or a 0-based column index")
        if fmt == "jsonl" and not isinstance(col, str):
            raise _entry_error(source, name, where, f"column {col!r} must be a key name: JSON lines are objects")
        if not header and fmt != "jsonl" and not isinstance(col, int):
            raise _entry_error(source, name, where, f"column {col!r} must be a 0-based index when header is false")
    metric = entry.get("metric", "accuracy")
    if metric not in METRICS:
        raise _entry_error(source, name, "metric", f"{metric!r} is not one of {', '.join(METRICS)}")
    extra = entry.get("metrics", ()) or ()
    if isinstance(extra, str) or not isinstance(extra, (list, tuple)):
        raise _entry_error(source, name, "metrics", "must be a list of metric names")
    extra = tuple(extra)
    for m in extra:
        if m not in METRICS:
            raise _entry_error(source, name, "metrics", f"{m!r} is not one of {', '.join(METRICS)}")
    if len(labels) != 2 and "f1" in (metric, *extra):
        raise _entry_error(source, name, "metric" if metric == "f1" else "metrics",
                           f"'f1' (of the second label) needs exactly two labels; this task has {len(labels)}")
    max_length = entry.get("max_length")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 8):
        raise _entry_error(source, name, "max_length", "must be an integer >= 8")
    return TaskSpec(
        name=name, train=str(entry["train"]), dev=str(entry["dev"]), template=template, labels=labels,
        label_field=entry["label_field"], fields=dict(fields_), format=fmt, header=header, metric=metric,
        metrics=extra, max_length=max_length, description=str(entry.get("description", "")), source=source,
    )


def load_manifest(path: str | Path | None = None) -> dict[str, TaskSpec]:
    """Read and validate a task manifest (the embedded one when ``path`` is None)."""
    p = Path(path) if path else EMBEDDED_MANIFEST
    if not p.exists():
        raise ConfigError("manifest", f"task manifest not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError("manifest", f"not valid YAML: {err}", str(p)) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), dict):
        raise ConfigError("tasks", "the manifest needs a top-level 'tasks' mapping", str(p))
    return {name: parse_task(name, entry, str(p)) for name, entry in raw["tasks"].items()}


def get_task(name: str, manifest: str | Path | None = None) -> TaskSpec:
    """Look up one task by name; an unknown name lists the known ones."""
    tasks = load_manifest(manifest)
    if name not in tasks:
        raise ConfigError("data.task", f"unknown task {name!r}; the manifest has {', '.join(sorted(tasks))}")
    return tasks[name]

