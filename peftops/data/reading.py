"""Strict reading of a task's raw files: GLUE files are split on tabs (never CSV quoting:
sentences contain bare quotes), a BOM is dropped, every row is checked, and any problem stops
with the file, line and field.

Rules for every row (TSV, CSV, JSONL or Parquet; a Parquet row's "line" is its 1-based row
number). In JSON lines and Parquet a column may be a path into nested values, ``instances.0.input``
(keys and list indices separated by dots), used when no key of that exact name exists.

Generation rows (:func:`parse_generation`) follow the same rules for their text fields; a chat
(``messages_field``) must be a non-empty list of ``{"role", "content"}`` objects with a role of
``system``, ``user`` or ``assistant``, ending with the assistant's turn (the response).

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


def parquet_rows(data: bytes, path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based row number, row as a dict) of a Parquet file's bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as err:
        raise DataError(path, f"not a readable Parquet file ({type(err).__name__})") from None
    for i, row in enumerate(table.to_pylist(), start=1):
        yield i, row


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
        if col in row:
            return row[col]
        if isinstance(col, str) and "." in col:
            value: Any = row
            for part in col.split("."):
                if isinstance(value, dict) and part in value:
                    value = value[part]
                elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                    value = value[int(part)]
                else:
                    raise DataError(path, f"path not found in this row (at {part!r})", line=line, field=col)
            return value
        raise DataError(path, "column not found in this row/header", line=line, field=str(col))
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


def _all_rows(spec: TaskSpec, data: bytes, path: Path):
    rows = parquet_rows(data, path) if spec.format == "parquet" else _rows(decode_text(data, path), path, spec)
    for line, row in rows:
        if all(_kept(row, col, want, path, line) for col, want in spec.where.items()):
            yield line, row


def _kept(row, col: str, want: str, path: Path, line: int) -> bool:
    value = _get(row, int(col) if isinstance(row, list) and col.isdigit() else col, path, line)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return _text(value, path, line, col, "a 'where' column") == want


def parse_split(spec: TaskSpec, data: bytes, path: Path, split: str) -> list[Example]:
    """Parse the bytes of one split strictly (see the module's rules)."""
    if spec.kind == "generation":
        return parse_generation(spec, data, path, split)
    label_index = {v: i for i, v in enumerate(spec.label_values)}
    examples: list[Example] = []
    for line, row in _all_rows(spec, data, path):
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


@dataclass(frozen=True)
class GenExample:
    """One generation row: the template fields and the response text, or a chat; its line."""

    fields: dict[str, str]
    response: str
    line: int
    messages: tuple[tuple[str, str], ...] = ()  # (role, content), the last one the assistant's response


def _messages(value: Any, path: Path, line: int, col: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        raise DataError(path, f"messages must be a list, got {_json_type(value)}", line=line, field=col)
    if not value:
        raise DataError(path, "messages is empty", line=line, field=col)
    out = []
    for k, msg in enumerate(value):
        where = f"{col}.{k}"
        if not isinstance(msg, dict):
            raise DataError(path, f"a message must be an object, got {_json_type(msg)}", line=line, field=where)
        if "role" not in msg:
            raise DataError(path, "a message needs a 'role'", line=line, field=f"{where}.role")
        role = _text(msg["role"], path, line, f"{where}.role", "the role")
        if role not in ("system", "user", "assistant"):
            shown = repr(role) if len(role) <= _SHOWN else repr(role[:_SHOWN]) + "..."
            raise DataError(path, f"unknown role {shown}; expected system, user or assistant", line=line,
                            field=f"{where}.role")
        if "content" not in msg:
            raise DataError(path, "a message needs a 'content'", line=line, field=f"{where}.content")
        content = _text(msg["content"], path, line, f"{where}.content", "a message's content")
        if not content:
            raise DataError(path, "empty text", line=line, field=f"{where}.content")
        out.append((role, content))
    if out[-1][0] != "assistant":
        raise DataError(path, "the last message must be the assistant's (the response to learn)", line=line,
                        field=f"{col}.{len(out) - 1}.role")
    if not any(role == "user" for role, _ in out[:-1]):
        raise DataError(path, "a chat needs a user message before the assistant's response", line=line, field=col)
    return tuple(out)


def parse_generation(spec: TaskSpec, data: bytes, path: Path, split: str) -> list[GenExample]:
    """Parse one split of a generation task strictly (see the module's rules)."""
    examples: list[GenExample] = []
    for line, row in _all_rows(spec, data, path):
        if spec.messages_field is not None:
            msgs = _messages(_get(row, spec.messages_field, path, line), path, line, spec.messages_field)
            examples.append(GenExample(fields={}, response=msgs[-1][1], line=line, messages=msgs))
            continue
        values = {}
        for placeholder, col in spec.fields.items():
            value = _text(_get(row, col, path, line), path, line, col, "a text field")
            if not value and placeholder not in spec.optional_fields:
                raise DataError(path, "empty text", line=line, field=str(col))
            values[placeholder] = value
        if spec.response_field is not None:
            response = _text(_get(row, spec.response_field, path, line), path, line, spec.response_field,
                             "the response")
            where = str(spec.response_field)
        else:
            response = spec.response_template.format(**values).strip()
            where = "response_template"
        if not response:
            raise DataError(path, "empty response", line=line, field=where)
        examples.append(GenExample(fields=values, response=response, line=line))
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


def subsample(examples: list, size: int, seed: int) -> list:
    """A fixed-seed subset in file order (``size`` 0 or >= len keeps all)."""
    if size <= 0 or size >= len(examples):
        return list(examples)
    idx = sorted(random.Random(seed).sample(range(len(examples)), size))
    return [examples[i] for i in idx]
