"""Prepared splits: a task's examples rendered through its template and tokenized, written
atomically with a content digest."""

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

from peftops.data.manifest import TaskSpec, get_task
from peftops.data.reading import Example, read_split, subsample

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
