"""Prepared splits: a task's examples rendered through its template and tokenized, written
atomically with a content digest.

A generation split (``kind: generation``) holds, per example, the prompt ids and the response ids
(ending with the end-of-sequence token, or the chat template's end-of-turn marker), the reference
text the metrics compare with, the decoding limits (``max_new_tokens``, stop strings, stop token
ids) and, when the entry asks for ``truncate: prompt_left``, which rows had their prompt cut and by
how much (in the split's content, so in its digest). Without it an over-long row is an error.

A prompt is never cut. One longer than ``max_length`` tokens is an error; so, before anything is
tokenized, is a row whose prompt has more than ``max_length * CHARS_PER_TOKEN`` characters (no
tokenizer packs that many characters into a token, so such a row can never fit, and tokenizing a
huge row would take gigabytes).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftops.config import DataConfig
from peftops.data.manifest import TaskSpec, get_task
from peftops.data.reading import Example, GenExample, read_split_source, subsample
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
    kind: str = "classification"
    response_ids: list[list[int]] = field(default_factory=list)  # generation: the supervised continuation
    references: list[str] = field(default_factory=list)  # generation: the response text scored against
    max_new_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_ids: list[int] = field(default_factory=list)
    truncation: dict[str, Any] = field(default_factory=dict)  # truncate: prompt_left, what was cut
    digest: str = ""
    path: Path | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def generative(self) -> bool:
        return self.kind == "generation"

    def continuation(self, i: int) -> list[int]:
        """The tokens supervised after example ``i``'s prompt: its label's verbalizer, or its response."""
        return self.response_ids[i] if self.generative else self.label_token_ids[self.labels[i]]

    def content(self) -> dict[str, Any]:
        out = {
            "task": self.task, "split": self.split, "verbalizers": self.verbalizers,
            "label_token_ids": self.label_token_ids, "input_ids": self.input_ids, "labels": self.labels,
            "lines": self.lines, "source": self.source, "source_sha256": self.source_sha256,
            "metric": self.metric, "metrics": list(self.metrics),
        }
        if self.generative:
            out.update({"kind": self.kind, "response_ids": self.response_ids, "references": self.references,
                        "max_new_tokens": self.max_new_tokens, "stop": list(self.stop),
                        "stop_ids": list(self.stop_ids), "truncation": self.truncation})
        return out


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


def render(template: str, values: dict[str, str], optional: tuple[str, ...] = ()) -> str:
    """``template`` filled with ``values``; a line whose placeholders are all optional and empty is
    left out (so ``Input: {input}`` disappears for a row without input)."""
    lines = []
    for line in template.split("\n"):
        names = [p for _, p, _, _ in string.Formatter().parse(line) if p is not None]
        if names and all(n in optional and not values.get(n) for n in names):
            continue
        lines.append(line)
    return "\n".join(lines).format(**values)


def _chat_texts(tokenizer, ex: GenExample, spec: TaskSpec, source: Path) -> tuple[str, str]:
    """(prompt, response) text of a chat through the tokenizer's own chat template: the prompt is
    every message but the last with the generation prompt, the response what the full chat adds."""
    msgs = [{"role": r, "content": c} for r, c in ex.messages]
    try:
        prompt = tokenizer.apply_chat_template(msgs[:-1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(msgs, tokenize=False)
    except Exception as err:  # the template's own checks (jinja raise_exception): e.g. roles out of order
        raise DataError(source, f"the chat template refused this chat: {err}", line=ex.line,
                        field=spec.messages_field) from None
    if not full.startswith(prompt):
        raise DataError(source, "the chat template renders the chat without its prompt as a prefix; "
                        "it cannot be split into prompt and response", line=ex.line, field=spec.messages_field)
    return prompt, full[len(prompt):]


def tokenize_generation(spec: TaskSpec, split: str, examples: list[GenExample], tokenizer, source: Path,
                        max_length: int, source_sha256: str | None = None) -> PreparedSplit:
    """Render prompts and responses, tokenize, and check (or, with ``truncate: prompt_left``, cut
    from the left) each row against ``max_length`` tokens, prompt + response."""
    limit = spec.max_length or max_length
    max_chars = limit * CHARS_PER_TOKEN
    chat = spec.messages_field is not None
    if chat and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"tasks.{spec.name}.messages_field", "the base's tokenizer has no chat template",
                          spec.source)
    cut = spec.truncate == "prompt_left"
    prompts, responses = [], []
    for ex in examples:
        if chat:
            prompt, response = _chat_texts(tokenizer, ex, spec, source)
        else:
            prompt, response = render(spec.prompt_template, ex.fields, spec.optional_fields), ex.response
        if len(response) > max_chars or (not cut and len(prompt) + len(response) > max_chars):
            raise DataError(source, f"the row would be {len(prompt) + len(response):,} characters, more than "
                            f"max_length={limit} tokens can hold (at most {CHARS_PER_TOKEN} characters per "
                            "token); shorten it, raise max_length or set truncate: prompt_left", line=ex.line)
        prompts.append(prompt[-max_chars:] if cut else prompt)  # cut further in tokens below
        responses.append(response)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    if chat:  # the chat template writes its own <bos>; the response is what the whole chat adds
        p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        full = tokenizer([p + r for p, r in zip(prompts, responses)], add_special_tokens=False)["input_ids"]
        alone = tokenizer(responses, add_special_tokens=False)["input_ids"]
        r_ids = [f[len(p):] if f[:len(p)] == p else a for p, f, a in zip(p_ids, full, alone)]
    else:
        p_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
        r_ids = [ids + [tokenizer.eos_token_id] for ids in tokenizer(responses, add_special_tokens=False)["input_ids"]]
    specials = set(tokenizer.all_special_ids)
    stop_ids = sorted({tokenizer.eos_token_id} | {t for ids in r_ids for t in ids if t in specials} - {None})
    input_ids, cuts = [], []
    for ex, p, r in zip(examples, p_ids, r_ids):
        p = list(map(int, p))
        if len(p) + len(r) > limit:
            head = 1 if bos and p[:1] == bos else 0
            room = limit - len(r) - head
            if not cut or room < 1:
                why = "the response alone leaves no room for a prompt; " if cut else ""
                raise DataError(source, f"prompt {len(p)} + response {len(r)} tokens is over max_length={limit}; "
                                f"{why}raise data.max_length or the task's max_length"
                                + ("" if cut else ", or set truncate: prompt_left"), line=ex.line)
            cuts.append({"line": ex.line, "prompt_tokens": len(p), "kept": head + room})
            p = p[:head] + p[len(p) - room:]
        input_ids.append(p)
    return PreparedSplit(
        task=spec.name, split=split, verbalizers=[], label_token_ids=[], input_ids=input_ids,
        labels=[0] * len(examples), lines=[ex.line for ex in examples], source=str(source),
        source_sha256=source_sha256 or file_sha256(source), metric=spec.metric, metrics=tuple(spec.metrics),
        kind="generation", response_ids=[list(map(int, r)) for r in r_ids],
        references=[ex.response for ex in examples], max_new_tokens=spec.max_new_tokens, stop=list(spec.stop),
        stop_ids=stop_ids,
        truncation={"mode": "prompt_left", "rows": cuts, "count": len(cuts)} if cut else {},
    )


def tokenize_split(spec: TaskSpec, split: str, examples: list[Example], tokenizer, source: Path,
                   max_length: int, source_sha256: str | None = None) -> PreparedSplit:
    """Fill the template and tokenize; a prompt longer than ``max_length`` is an error.

    ``source_sha256`` is the digest of the bytes the examples were parsed from (computed from
    ``source`` when not given)."""
    if spec.kind == "generation":
        return tokenize_generation(spec, split, examples, tokenizer, source, max_length, source_sha256)
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
