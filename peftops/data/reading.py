"""Strict reading of a task's raw files: GLUE files are split on tabs (never CSV quoting:
sentences contain bare quotes), a BOM is dropped, every row is checked, and any problem stops
with the file, line and field.

Rules for every row (TSV, CSV or JSONL):

* a text field must be text: in JSON lines a ``null``, number, list or object where text is
  expected is refused (never turned into ``"None"``, ``"5"`` or ``"['x']"``); a label may be
  text or an integer (``"label": 1`` matches the manifest label ``1``), never a boolean, float or null;
* a NUL byte in a text field or a label is refused, naming the line and the field;
* surrounding whitespace is removed from text fields and from labels before they are used (GLUE
  puts a space before some tabs), so the label `` 1 `` is the label ``1``; a text field that is
  empty after that is refused;
* a data path that is missing, a directory, a symlink loop or unreadable is one line naming it.

Errors never quote a row's text; at most a label value, cut to a few characters.

A file's bytes are read once (:func:`read_source`): the digest recorded for a prepared split is
the sha256 of exactly the bytes that were parsed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftops.data.manifest import TaskSpec, data_path
from peftops.errors import DataError

_SHOWN = 40  # characters of a rejected label value shown in an error


def read_source(path: str | Path, missing: str = "data file not found") -> bytes:
    """The bytes of a data file, read once; any reason it cannot be read is one :class:`DataError`."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise DataError(path, missing) from None
    except IsADirectoryError:
        raise DataError(path, "is a directory, not a data file") from None
    except OSError as err:  # a symlink loop (ELOOP), permissions, a device error
        raise DataError(path, f"cannot be read: {err.strerror or type(err).__name__}") from None


def decode_text(data: bytes, path: str | Path) -> str:
    """UTF-8 text of a data file's bytes (a BOM dropped), else a :class:`DataError`."""
    try:
        return data.decode("utf-8-sig")  # drops MRPC's BOM
    except UnicodeDecodeError as err:
        raise DataError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None


def text_lines(text: str) -> list[str]:
    """The lines of a file's text; a trailing newline ends the last line (CoLA dev has none)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def jsonl_rows(text: str, path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line of a JSON-lines text."""
    for i, line in enumerate(text_lines(text), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(path, f"invalid JSON: {err.msg}", line=i) from None
        except RecursionError:
            raise DataError(path, "invalid JSON: nested too deeply", line=i) from None
        if not isinstance(row, dict):
            raise DataError(path, "each line must be a JSON object", line=i)
        yield i, row


@dataclass(frozen=True)
class Example:
    """One labeled row: the template fields, the label's index in the task's labels, its line."""

    fields: dict[str, str]
    label: int
    line: int


@dataclass(frozen=True)
class SplitSource:
    """One parsed split: the file, the sha256 of the bytes parsed, and the examples."""

    path: Path
    sha256: str
    examples: list[Example]


def _rows(text: str, path: Path, spec: TaskSpec):
    """Yield (line number, row) where row is a dict (header/jsonl) or a list (no header)."""
    if spec.format == "jsonl":
        yield from jsonl_rows(text, path)
        return
    lines = text_lines(text)
    if spec.format == "tsv":
        split = [line.rstrip("\r").split("\t") for line in lines]  # never CSV quoting for TSV
    else:
        reader = csv.reader(io.StringIO("\n".join(lines)))
        split = []
        try:
            split.extend(reader)
        except csv.Error as err:
            raise DataError(path, f"not valid CSV ({err})", line=reader.line_num) from None
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


def _json_type(value: Any) -> str:
    return "null" if value is None else {bool: "a boolean", int: "a number", float: "a number", list: "a list",
                                         dict: "an object"}.get(type(value), type(value).__name__)


def _text(value: Any, path: Path, line: int, col: Any, what: str) -> str:
    if not isinstance(value, str):
        raise DataError(path, f"{what} must be text, got {_json_type(value)}", line=line, field=str(col))
    if "\x00" in value:
        raise DataError(path, f"{what} contains a NUL byte", line=line, field=str(col))
    return value.strip()


def parse_split(spec: TaskSpec, data: bytes, path: Path, split: str) -> list[Example]:
    """Parse the bytes of one split strictly (see the module's rules)."""
    label_index = {v: i for i, v in enumerate(spec.label_values)}
    examples: list[Example] = []
    for line, row in _rows(decode_text(data, path), path, spec):
        raw = _get(row, spec.label_field, path, line)
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = str(raw)
        raw_label = _text(raw, path, line, spec.label_field, "the label")
        if raw_label not in label_index:
            shown = repr(raw_label) if len(raw_label) <= _SHOWN else repr(raw_label[:_SHOWN]) + "..."
            raise DataError(path, f"unknown label {shown}; expected one of {', '.join(spec.label_values)}",
                            line=line, field=str(spec.label_field))
        values = {}
        for placeholder, col in spec.fields.items():
            value = _text(_get(row, col, path, line), path, line, col, "a text field")
            if not value:
                raise DataError(path, "empty text", line=line, field=str(col))
            values[placeholder] = value
        examples.append(Example(fields=values, label=label_index[raw_label], line=line))
    if not examples:
        raise DataError(path, f"the {split} split has no examples")
    return examples


def read_split_source(spec: TaskSpec, split: str, data_root: str | Path | None = None) -> SplitSource:
    """Read one split's file once, hash those bytes and parse them."""
    path = data_path(spec.train if split == "train" else spec.dev, data_root)
    data = read_source(path)
    return SplitSource(path=path, sha256=hashlib.sha256(data).hexdigest(),
                       examples=parse_split(spec, data, path, split))


def read_split(spec: TaskSpec, split: str, data_root: str | Path | None = None) -> tuple[Path, list[Example]]:
    """Parse one split of a task strictly; returns the file and its examples."""
    src = read_split_source(spec, split, data_root)
    return src.path, src.examples


def subsample(examples: list[Example], size: int, seed: int) -> list[Example]:
    """A fixed-seed subset in file order (``size`` 0 or >= len keeps all)."""
    if size <= 0 or size >= len(examples):
        return list(examples)
    idx = sorted(random.Random(seed).sample(range(len(examples)), size))
    return [examples[i] for i in idx]
