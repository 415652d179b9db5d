"""Evaluation: classify by comparing the verbalizers' log-probabilities after the prompt, or,
for a generation task, generate greedily and score the texts.

Classification: the model is never asked to generate: for each example the summed log-probability
of each label's continuation is computed and the largest wins. When every verbalizer is one token
(the GLUE defaults are), one forward pass scores all labels from the last position's logits.

Generation: batched greedy decoding with the KV cache (``peftops.evaluation.generate``), then
exact match, token F1 and ROUGE-L against the references, plus ``dev_loss``, the mean
cross-entropy per response token (the training loss, on the dev split). The task's ``metric``
is the score; a few (prompt, reference, output) samples come back for the run's record.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from peftops.training.batching import (IGNORE, build_batch, forward_logits, in_row_order, probes_first,
                                       prompt_last_logits, shortest_first, supervised_loss)
from peftops.data.prepared import PreparedSplit
from peftops.evaluation.generate import generate_all, greedy_generate
from peftops.evaluation.metrics import compute, compute_generation
from peftops.training.kernels import fuse_rms_norms
from peftops.training.precision import autocast, model_precision


@dataclass
class EvalResult:
    """Scores of one model on one split."""

    metric: str
    score: float
    metrics: dict[str, float]
    n: int
    predictions: list[int] = field(repr=False, default_factory=list)
    eval_time_s: float = 0.0
    precision: str = "fp32"
    outputs: list[str] = field(repr=False, default_factory=list)  # generation: the generated texts
    samples: list[dict[str, Any]] = field(repr=False, default_factory=list)  # generation: a few, for the record
    # (probe_rows, V) last-position logits of the first ``probe_rows`` prompts, when asked for
    probe_logits: torch.Tensor | None = field(repr=False, default=None)

    @property
    def examples_per_s(self) -> float:
        return self.n / self.eval_time_s if self.eval_time_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "score": self.score, "metrics": self.metrics, "n": self.n,
                "eval_time_s": self.eval_time_s, "examples_per_s": self.examples_per_s,
                "precision": self.precision}


def one_token_labels(label_ids: list[list[int]]) -> bool:
    """Whether every verbalizer is one token: one forward pass then scores all labels."""
    return all(len(ids) == 1 for ids in label_ids)


@torch.no_grad()
def label_scores(model: torch.nn.Module, prompts: list[list[int]], label_ids: list[list[int]], pad_id: int,
                 device: torch.device, logits_out: list[torch.Tensor] | None = None) -> torch.Tensor:
    """(B, n_labels) summed log-probabilities of each label continuation after each prompt.

    With one-token verbalizers and ``logits_out``, the prompts' last-position logits over the
    whole vocabulary (fp32, on the CPU) are appended to it as well."""
    if one_token_labels(label_ids):
        logits = prompt_last_logits(model, prompts, pad_id, device).float()
        if logits_out is not None:
            logits_out.append(logits.cpu())
        logp = torch.log_softmax(logits, dim=-1)
        return logp[:, [ids[0] for ids in label_ids]]
    cols = []
    for ids in label_ids:
        batch = build_batch(prompts, [ids] * len(prompts), pad_id).to(device)
        logp = torch.log_softmax(forward_logits(model, batch).float(), dim=-1)
        tgt = batch.targets.clamp(min=0)
        picked = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        cols.append(picked.masked_fill(batch.targets == IGNORE, 0.0).sum(-1))
    return torch.stack(cols, dim=1)


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: PreparedSplit, *, pad_id: int, batch_size: int = 16,
             device: str | torch.device = "cpu", precision: str | None = None, tokenizer=None,
             n_samples: int = 16, probe_rows: int = 0) -> EvalResult:
    """Predict every example of ``split`` and compute the task's metrics.

    ``precision`` is a resolved one (fp32 or bf16, the run's; default: the one the model is stored
    for, see ``model_precision``): bf16 runs the products under autocast (the model loaded as
    ``peftops.stages.load_adapted`` does for it); the log-probabilities are taken in fp32 either way.

    ``probe_rows``: for a task with one-token verbalizers, the first ``probe_rows`` prompts are
    batched on their own (``probes_first``) and their last-position logits come back as
    ``probe_logits``: what a merge certificate computes for the adapter-applied side with the
    same batches (``peftops.evaluation.merge.last_logits``), so it need not compute them again.
    """
    device = torch.device(device)
    precision = precision or model_precision(model)
    model.eval()
    fuse_rms_norms(model)  # the training loop's norms: same values, fewer passes
    if split.generative:
        return evaluate_generation(model, split, pad_id=pad_id, batch_size=batch_size, device=device,
                                   precision=precision, tokenizer=tokenizer, n_samples=n_samples)
    preds = [0] * len(split)
    lengths = [len(x) for x in split.input_ids]
    probe_rows = min(probe_rows, len(split)) if one_token_labels(split.label_token_ids) else 0
    batches = probes_first(lengths, batch_size, probe_rows)
    kept: list[torch.Tensor] = []  # one per probe batch: the first ones of ``batches``
    t0 = time.perf_counter()
    with autocast(device, precision):
        for rows in batches:
            scores = label_scores(model, [split.input_ids[i] for i in rows], split.label_token_ids, pad_id, device,
                                  kept if rows[0] < probe_rows else None)
            for i, p in zip(rows, scores.argmax(-1).tolist()):
                preds[i] = p
    names = [split.metric, *[m for m in split.metrics if m != split.metric]]
    metrics = compute(names, preds, split.labels)
    probe_logits = in_row_order(kept, batches[:len(kept)]) if probe_rows else None
    return EvalResult(metric=split.metric, score=metrics[split.metric], metrics=metrics, n=len(split),
                      predictions=preds, eval_time_s=time.perf_counter() - t0, precision=precision,
                      probe_logits=probe_logits)


@torch.no_grad()
def response_loss(model: torch.nn.Module, split: PreparedSplit, *, pad_id: int, batch_size: int,
                  device: torch.device) -> float:
    """Mean cross-entropy (nats) per response token of a generation split, as in training."""
    total, count = 0.0, 0
    lengths = [len(p) + len(r) for p, r in zip(split.input_ids, split.response_ids)]
    for rows in shortest_first(lengths, batch_size):
        batch = build_batch([split.input_ids[i] for i in rows], [split.response_ids[i] for i in rows],
                            pad_id).to(device)
        total += float(supervised_loss(model, batch))
        count += int((batch.targets != IGNORE).sum())
    return total / count


@torch.no_grad()
def evaluate_generation(model: torch.nn.Module, split: PreparedSplit, *, pad_id: int, batch_size: int,
                        device: torch.device, precision: str, tokenizer, n_samples: int = 16) -> EvalResult:
    """Greedy outputs of every dev prompt, their metrics, the dev loss and the first ``n_samples``."""
    if tokenizer is None:
        raise ValueError("evaluating a generation task needs the tokenizer (to decode the outputs)")
    t0 = time.perf_counter()
    with autocast(device, precision):
        got = generate_all(model, split.input_ids, pad_id=pad_id, stop_ids=split.stop_ids,
                           max_new_tokens=split.max_new_tokens, batch_size=batch_size, device=device,
                           tokenizer=tokenizer, stop=split.stop)
        dev_loss = response_loss(model, split, pad_id=pad_id, batch_size=batch_size, device=device)
    metrics = compute_generation(got.texts, split.references)
    metrics["dev_loss"] = dev_loss
    ordered = {split.metric: metrics[split.metric], **metrics}
    samples = [{"line": split.lines[i], "prompt": tokenizer.decode(split.input_ids[i], skip_special_tokens=True),
                "reference": split.references[i], "output": got.texts[i]} for i in range(min(n_samples, len(split)))]
    return EvalResult(metric=split.metric, score=metrics[split.metric], metrics=ordered, n=len(split),
                      eval_time_s=time.perf_counter() - t0, precision=precision, outputs=got.texts,
                      samples=samples)


@torch.no_grad()
def latency_per_example(model: torch.nn.Module, split: PreparedSplit, *, pad_id: int, batch_size: int,
                        device: str | torch.device = "cpu", n_batches: int = 5, warmup: int = 1,
                        precision: str | None = None) -> float:
    """Median seconds per example of scoring ``batch_size`` prompts at a time, in ``precision``
    (default: the one the model is stored for); for a generation task, of one greedy output each."""
    return timed_batches(model, split, pad_id=pad_id, batch_size=batch_size, device=device,
                         n_batches=n_batches, warmup=warmup, precision=precision)["s_per_example"]


@torch.no_grad()
def timed_batches(model: torch.nn.Module, split: PreparedSplit, *, pad_id: int, batch_size: int,
                  device: str | torch.device = "cpu", n_batches: int = 5, warmup: int = 1,
                  precision: str | None = None) -> dict[str, float]:
    """Median seconds per example over ``n_batches`` timed batches after ``warmup``, and, for a
    generation task, median seconds per generated token (a batch's time over the tokens it produced,
    the stop token included: it was computed too)."""
    device = torch.device(device)
    precision = precision or model_precision(model)
    model.eval()
    per_example, per_token = [], []
    for b in range(warmup + n_batches):
        start = (b * batch_size) % max(1, len(split) - batch_size + 1)
        prompts = split.input_ids[start:start + batch_size]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with autocast(device, precision):
            if split.generative:  # a generation task's unit of work: one greedy output
                got = greedy_generate(model, prompts, pad_id=pad_id, stop_ids=split.stop_ids,
                                      max_new_tokens=split.max_new_tokens, device=device)
                tokens = sum(min(len(ids) + 1, split.max_new_tokens) for ids in got.ids)
            else:
                label_scores(model, prompts, split.label_token_ids, pad_id, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t0
        if b >= warmup:
            per_example.append(elapsed / len(prompts))
            if split.generative:
                per_token.append(elapsed / max(1, tokens))
    out = {"s_per_example": statistics.median(per_example)}
    if per_token:
        out["s_per_token"] = statistics.median(per_token)
    return out
