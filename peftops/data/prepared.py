"""Prepared splits: a task's examples rendered through its template and tokenized, written
atomically with a content digest.

A prompt is never cut. One longer than ``max_length`` tokens is an error; so, before anything is
tokenized, is a row whose prompt has more than ``max_length * CHARS_PER_TOKEN`` characters (no
tokenizer packs that many characters into a token, so such a row can never fit, and tokenizing a
huge row would take gigabytes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftops.config import DataConfig
from peftops.data.manifest import TaskSpec, get_task
from peftops.data.reading import Example, read_split_source, subsample
from peftops.digest import canonical_json, file_sha256, text_sha256
from peftops.errors import ConfigError, DataError
from peftops.fsutil import write_text_atomic

CHARS_PER_TOKEN = 64  # a generous bound on the characters of one token

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


def check_prompt_chars(spec: TaskSpec, examples: list[Example], source: Path, limit: int) -> None:
    """Refuse a row whose prompt has more characters than ``limit`` tokens can ever hold."""
    max_chars = limit * CHARS_PER_TOKEN
    fixed = len(spec.template.format(**{k: "" for k in spec.fields}))
    for ex in examples:
        n = fixed + sum(len(v) for v in ex.fields.values())
        if n > max_chars:
            longest = max(ex.fields, key=lambda k: len(ex.fields[k]))
            raise DataError(source, f"the prompt would be {n:,} characters, more than max_length={limit} tokens can "
                            f"hold (at most {CHARS_PER_TOKEN} characters per token: {max_chars:,}); never cut, so "
                            "shorten the row or raise data.max_length", line=ex.line, field=str(spec.fields[longest]))


def tokenize_split(spec: TaskSpec, split: str, examples: list[Example], tokenizer, source: Path,
                   max_length: int, source_sha256: str | None = None) -> PreparedSplit:
    """Fill the template and tokenize; a prompt longer than ``max_length`` is an error.

    ``source_sha256`` is the digest of the bytes the examples were parsed from (computed from
    ``source`` when not given)."""
    label_ids = [tokenizer(v, add_special_tokens=False)["input_ids"] for v in spec.verbalizers]
    for v, ids in zip(spec.verbalizers, label_ids):
        if not ids:
            raise ConfigError(f"tasks.{spec.name}.labels", f"verbalizer {v!r} tokenizes to nothing", spec.source)
    limit = spec.max_length or max_length
    check_prompt_chars(spec, examples, source, limit)
    prompts = [spec.template.format(**ex.fields) for ex in examples]
    encoded = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    longest = max(len(x) for x in label_ids)
    for ex, ids in zip(examples, encoded):
        if len(ids) + longest > limit:
            raise DataError(source, f"prompt is {len(ids)} tokens (+{longest} label), over max_length={limit}; "
                            "raise data.max_length or the task's max_length", line=ex.line)
    return PreparedSplit(
        task=spec.name, split=split, verbalizers=spec.verbalizers, label_token_ids=label_ids,
        input_ids=[list(map(int, ids)) for ids in encoded], labels=[ex.label for ex in examples],
        lines=[ex.line for ex in examples], source=str(source), source_sha256=source_sha256 or file_sha256(source),
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
        src = read_split_source(spec, split, cfg.data_root)
        chosen = subsample(src.examples, size, cfg.seed)
        ready[split] = tokenize_split(spec, split, chosen, tokenizer, src.path, cfg.max_length, src.sha256)
    out = {split: save_prepared(prepared, Path(out_dir) / f"{split}.json") for split, prepared in ready.items()}
    return PreparedData(
        task=cfg.task, train_path=out["train"].path, dev_path=out["dev"].path,
        digest=combine({"train": out["train"].digest, "dev": out["dev"].digest}),
        train_size=len(out["train"]), dev_size=len(out["dev"]),
    )
