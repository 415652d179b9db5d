"""Task data: the task manifest, strict file parsing, prompt templates and prepared splits.

A task is an entry in a YAML manifest (``peftops/tasks.yaml`` by default): its files and
their format, which fields fill the prompt template, the label verbalizers and the metric.
Parsing is strict: GLUE files are split on tabs (never CSV quoting, sentences contain bare
quotes), a BOM is dropped, every row is checked, and any problem stops with the file, line
and field. A prepared split is written atomically with a content digest.
"""

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


@dataclass(frozen=True)
class Example:
    """One labeled row: the template fields, the label's index in the task's labels, its line."""

    fields: dict[str, str]
    label: int
    line: int


def _rows(path: Path, spec: TaskSpec):
    """Yield (line number, row) where row is a dict (header/jsonl) or a list (no header)."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # drops MRPC's BOM
    except FileNotFoundError:
        raise DataError(path, "data file not found") from None
    except UnicodeDecodeError as err:
        raise DataError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # trailing newline; CoLA dev has none
    if spec.format == "jsonl":
        for i, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(path, f"invalid JSON: {err.msg}", line=i) from None
            if not isinstance(row, dict):
                raise DataError(path, "each line must be a JSON object", line=i)
            yield i, row
        return
    if spec.format == "tsv":
        split = [line.rstrip("\r").split("\t") for line in lines]  # never CSV quoting for TSV
    else:
        split = list(csv.reader(io.StringIO("\n".join(lines))))
    start = 1
    header: list[str] | None = None
    if spec.header:
        if not split:
            raise DataError(path, "file is empty (expected a header row)")
        header = [h.strip() for h in split[0]]
        start = 2
    for offset, cols in enumerate(split[start - 1:]):
        i = start + offset
        if header is None:
            yield i, cols
            continue
        if len(cols) != len(header):
            raise DataError(path, f"expected {len(header)} columns, found {len(cols)}", line=i)
        yield i, dict(zip(header, cols))


def _get(row, col, path: Path, line: int):
    if isinstance(row, dict):
        if col not in row:
            raise DataError(path, "column not found in this row/header", line=line, field=str(col))
        return row[col]
    if not isinstance(col, int) or col >= len(row):
        raise DataError(path, f"row has {len(row)} columns", line=line, field=str(col))
    return row[col]


def read_split(spec: TaskSpec, split: str, data_root: str | Path | None = None) -> tuple[Path, list[Example]]:
    """Parse one split of a task strictly; returns the file and its examples."""
    rel = spec.train if split == "train" else spec.dev
    path = Path(rel)
    if not path.is_absolute():
        path = Path(data_root or default_data_root()) / rel
    label_index = {v: i for i, v in enumerate(spec.label_values)}
    examples: list[Example] = []
    for line, row in _rows(path, spec):
        raw_label = str(_get(row, spec.label_field, path, line)).strip()
        if raw_label not in label_index:
            raise DataError(path, f"unknown label {raw_label!r}; expected one of {', '.join(spec.label_values)}",
                            line=line, field=str(spec.label_field))
        values = {}
        for placeholder, col in spec.fields.items():
            value = _get(row, col, path, line)
            if not isinstance(value, str):
                value = str(value)
            value = value.strip()
            if not value:
                raise DataError(path, "empty text", line=line, field=str(col))
            values[placeholder] = value
        examples.append(Example(fields=values, label=label_index[raw_label], line=line))
    if not examples:
        raise DataError(path, f"the {split} split has no examples")
    return path, examples


def subsample(examples: list[Example], size: int, seed: int) -> list[Example]:
    """A fixed-seed subset in file order (``size`` 0 or >= len keeps all)."""
    if size <= 0 or size >= len(examples):
        return list(examples)
    idx = sorted(random.Random(seed).sample(range(len(examples)), size))
    return [examples[i] for i in idx]


@dataclass
class PreparedSplit:
    """A tokenized split: prompt ids per example, label index, and the verbalizers' token ids."""

    task: str
    split: str
    verbalizers: list[str]
    label_token_ids: list[list[int]]
    input_ids: list[list[int]]
    labels: list[int]
    lines: list[int]
    source: str
    source_sha256: str
    metric: str = "accuracy"
    metrics: tuple[str, ...] = ()
    digest: str = ""
    path: Path | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    def content(self) -> dict[str, Any]:
        return {
            "task": self.task, "split": self.split, "verbalizers": self.verbalizers,
            "label_token_ids": self.label_token_ids, "input_ids": self.input_ids, "labels": self.labels,
            "lines": self.lines, "source": self.source, "source_sha256": self.source_sha256,
            "metric": self.metric, "metrics": list(self.metrics),
        }


def tokenize_split(spec: TaskSpec, split: str, examples: list[Example], tokenizer, source: Path,
                   max_length: int) -> PreparedSplit:
    """Fill the template and tokenize; a prompt longer than ``max_length`` is an error."""
    label_ids = [tokenizer(v, add_special_tokens=False)["input_ids"] for v in spec.verbalizers]
    for v, ids in zip(spec.verbalizers, label_ids):
        if not ids:
            raise ConfigError(f"tasks.{spec.name}.labels", f"verbalizer {v!r} tokenizes to nothing", spec.source)
    prompts = [spec.template.format(**ex.fields) for ex in examples]
    encoded = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    limit = spec.max_length or max_length
    longest = max(len(x) for x in label_ids)
    for ex, ids in zip(examples, encoded):
        if len(ids) + longest > limit:
            raise DataError(source, f"prompt is {len(ids)} tokens (+{longest} label), over max_length={limit}; "
                            "raise data.max_length or the task's max_length", line=ex.line)
    return PreparedSplit(
        task=spec.name, split=split, verbalizers=spec.verbalizers, label_token_ids=label_ids,
        input_ids=[list(map(int, ids)) for ids in encoded], labels=[ex.label for ex in examples],
        lines=[ex.line for ex in examples], source=str(source), source_sha256=file_sha256(source),
        metric=spec.metric, metrics=tuple(spec.metrics),
    )


def save_prepared(split: PreparedSplit, path: Path) -> PreparedSplit:
    """Write a prepared split atomically with its content digest."""
    content = split.content()
    text = canonical_json(content)
    split.digest = text_sha256(text)
    content["digest"] = split.digest
    write_text_atomic(Path(path), json.dumps(content, separators=(",", ":")) + "\n")
    split.path = Path(path)
    return split


def load_prepared(path: str | Path) -> PreparedSplit:
    """Read a prepared split and check its digest."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(p, "prepared split not found; run `peftops prepare` first") from None
    except json.JSONDecodeError as err:
        raise DataError(p, f"corrupted prepared split: {err.msg}", line=err.lineno) from None
    digest = raw.pop("digest", "")
    if text_sha256(canonical_json(raw)) != digest:
        raise DataError(p, "prepared split does not match its digest; run `peftops prepare` again")
    raw["metrics"] = tuple(raw.get("metrics", ()))
    return PreparedSplit(**raw, digest=digest, path=p)


@dataclass(frozen=True)
class PreparedData:
    """The outputs of the prepare stage."""

    task: str
    train_path: Path
    dev_path: Path
    digest: str  # one digest over both prepared splits: the data's identity in lineage
    train_size: int
    dev_size: int


def prepare(cfg: DataConfig, tokenizer, out_dir: Path) -> PreparedData:
    """Parse, subsample, tokenize and write the train and dev splits of ``cfg.task``."""
    from peftops.digest import combine

    spec = get_task(cfg.task, cfg.manifest)
    # Both splits are parsed and tokenized before either is written: a bad dev file must not
    # leave a new train split beside an old dev split.
    ready = {}
    for split, size in (("train", cfg.train_size), ("dev", cfg.dev_size)):
        source, examples = read_split(spec, split, cfg.data_root)
        chosen = subsample(examples, size, cfg.seed)
        ready[split] = tokenize_split(spec, split, chosen, tokenizer, source, cfg.max_length)
    out = {split: save_prepared(prepared, Path(out_dir) / f"{split}.json") for split, prepared in ready.items()}
    return PreparedData(
        task=cfg.task, train_path=out["train"].path, dev_path=out["dev"].path,
        digest=combine({"train": out["train"].digest, "dev": out["dev"].digest}),
        train_size=len(out["train"]), dev_size=len(out["dev"]),
    )
