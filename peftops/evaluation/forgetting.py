"""Forgetting: the model's language-modelling loss on general held-out text, before vs after.

PEFT can forget too. To measure it, a fixed set of general texts is built from the
Self-Instruct user-oriented instructions (``instruct/self_instruct_user_oriented_EVAL_ONLY.jsonl``,
252 expert-written tasks that are for evaluation only: no shipped task trains on them; the seed
tasks are the ``self_instruct`` task's training data). Each is instruction, input and output as
plain text; the set is a seeded sample of those that fit ``max_tokens``, never truncated, and the mean next-token negative
log-likelihood over every token of every text is computed for the base and for each adapted
model. The delta (after - before, in nats per token) sits beside the task score: above zero,
the adaptation made the model worse at general text.

The loss runs through the same left-padded batches as training (``peftops.training.batching``), so a
method that prepends virtual tokens (prompt or prefix tuning) is measured on the real tokens.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from peftops.training.batching import IGNORE, build_batch, forward_logits, shortest_first
from peftops.config import Config
from peftops.data.manifest import data_path
from peftops.data.reading import decode_text, jsonl_rows, read_source
from peftops.digest import canonical_json, text_sha256
from peftops.errors import DataError

GENERAL_TEXTS = "instruct/self_instruct_user_oriented_EVAL_ONLY.jsonl"  # evaluation only: never trained on


class ForgettingConfig(Config):
    """Which general texts, how many, and how they are batched."""

    config_prefix: ClassVar[str] = "forgetting"
    source: str = GENERAL_TEXTS  # relative to the data root, or absolute
    size: Annotated[int, Field(ge=1)] = 32  # texts in the held-out set
    max_tokens: Annotated[int, Field(ge=8)] = 96  # texts longer than this (with BOS) are skipped, never cut
    seed: int = 0
    batch_size: Annotated[int, Field(ge=1)] = 4


@dataclass
class GeneralTextSet:
    """Tokenized held-out texts (each starts with BOS) and the set's content digest."""

    input_ids: list[list[int]]
    ids: list[str]
    source: str
    digest: str

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_tokens(self) -> int:
        """Tokens that are predicted (every token after the first)."""
        return sum(len(x) - 1 for x in self.input_ids)


def seed_task_text(row: dict[str, Any]) -> str:
    """One seed task as plain text: instruction, then input (if any), then output."""
    parts = [str(row.get("instruction", "")).strip()]
    for inst in row.get("instances", [])[:1]:
        if str(inst.get("input", "")).strip():
            parts.append(str(inst["input"]).strip())
        parts.append(str(inst.get("output", "")).strip())
    return "\n\n".join(p for p in parts if p)


def build_general_set(tokenizer, cfg: ForgettingConfig = ForgettingConfig(),
                      data_root: str | Path | None = None) -> GeneralTextSet:
    """The fixed held-out set: a seeded sample of the source's tasks that fit ``cfg.max_tokens``."""
    path = data_path(cfg.source, data_root)
    data = read_source(path, missing="general text file not found (needed for the forgetting measure)")
    rows = []
    for i, row in jsonl_rows(decode_text(data, path), path):
        if not isinstance(row.get("instruction"), str):
            raise DataError(path, "expected an object with an 'instruction' text", line=i, field="instruction")
        rows.append((str(row.get("id", i)), seed_task_text(row)))
    encoded = tokenizer([t for _, t in rows], add_special_tokens=True)["input_ids"]
    fitting = [(rid, list(map(int, ids))) for (rid, _), ids in zip(rows, encoded) if 2 <= len(ids) <= cfg.max_tokens]
    if len(fitting) < cfg.size:
        raise DataError(path, f"only {len(fitting)} texts fit max_tokens={cfg.max_tokens}; "
                        f"forgetting.size is {cfg.size}")
    chosen = sorted(random.Random(cfg.seed).sample(range(len(fitting)), cfg.size))
    ids = [fitting[i][0] for i in chosen]
    input_ids = [fitting[i][1] for i in chosen]
    digest = text_sha256(canonical_json({"ids": ids, "input_ids": input_ids}))
    return GeneralTextSet(input_ids=input_ids, ids=ids, source=str(path), digest=digest)


@torch.no_grad()
def general_nll(model: torch.nn.Module, texts: GeneralTextSet, *, pad_id: int, batch_size: int = 4,
                device: str | torch.device | None = None) -> float:
    """Mean next-token negative log-likelihood (nats/token) over every token of ``texts``.

    Logits are taken at the text positions only, a few texts at a time (a 262k vocabulary
    makes full-sequence logits large).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    for batch_rows in shortest_first([len(x) for x in texts.input_ids], batch_size):
        rows = [texts.input_ids[i] for i in batch_rows]
        batch = build_batch([r[:1] for r in rows], [r[1:] for r in rows], pad_id).to(device)
        logits = forward_logits(model, batch).float()
        loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE,
                               reduction="sum")
        total += float(loss)
        count += int((batch.targets != IGNORE).sum())
        del logits
    return total / count


@dataclass
class ForgettingResult:
    """General-text loss of the base and of the adapted model, and their difference."""

    nll_before: float
    nll_after: float
    n_texts: int
    n_tokens: int
    set_digest: str
    time_s: float = 0.0

    @property
    def delta(self) -> float:
        return self.nll_after - self.nll_before

    @property
    def ppl_ratio(self) -> float:
        """Perplexity after / before (exp of the delta)."""
        return math.exp(self.delta)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "delta": self.delta, "ppl_ratio": self.ppl_ratio}


def measure(model: torch.nn.Module, texts: GeneralTextSet, nll_before: float, *, pad_id: int,
            batch_size: int = 4) -> ForgettingResult:
    """The adapted ``model``'s general-text loss against the base's ``nll_before``."""
    t0 = time.perf_counter()
    after = general_nll(model, texts, pad_id=pad_id, batch_size=batch_size)
    return ForgettingResult(nll_before=nll_before, nll_after=after, n_texts=len(texts), n_tokens=texts.n_tokens,
                            set_digest=texts.digest, time_s=time.perf_counter() - t0)
