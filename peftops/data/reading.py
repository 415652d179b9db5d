"""Strict reading of a task's raw files: GLUE files are split on tabs (never CSV quoting:
sentences contain bare quotes), a BOM is dropped, every row is checked, and any problem stops
with the file, line and field."""

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

from peftops.data.manifest import TaskSpec

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

