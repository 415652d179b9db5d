"""Left-padded batches whose supervised tokens all sit at the end of the row.

Padding on the left lines every row up at its last column, so the positions that predict
label tokens are the last ``K`` columns of every row. The model is then asked for logits at
those ``K`` positions only (``logits_to_keep``): on Gemma 3 270M the 262k-vocabulary LM head
is ~60% of the per-token FLOPs, and a classification prompt has one supervised token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) left-padded
    attention_mask: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T) counting real tokens only
    targets: torch.Tensor  # (B, K) token ids to predict at the last K positions, IGNORE elsewhere
    n_examples: int

    @property
    def keep(self) -> int:
        return self.targets.shape[1]

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device),
                     self.targets.to(device), self.n_examples)


def shortest_first(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of ``batch_size``, shortest rows first (a stable sort).

    A batch is padded to its longest row, so scoring rows in length order wastes the least on
    padding; callers put each result back at its row's index.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def probes_first(lengths: list[int], batch_size: int, n_probes: int) -> list[list[int]]:
    """``shortest_first`` over the first ``n_probes`` rows, then over the others: each row in one
    batch, and the first rows batched exactly as ``shortest_first(lengths[:n_probes], batch_size)``
    batches them (a merge certificate's probes, ``peftops.evaluation.merge.last_logits``)."""
    rest = shortest_first(lengths[n_probes:], batch_size)
    return shortest_first(lengths[:n_probes], batch_size) + [[i + n_probes for i in rows] for rows in rest]


def in_row_order(chunks: list[torch.Tensor], batches: list[list[int]]) -> torch.Tensor:
    """The per-batch results ``chunks`` (one row per index of ``batches``) concatenated and put back
    in row order: rows 0..N-1 of what ``shortest_first`` or ``probes_first`` batched."""
    order = torch.tensor([i for rows in batches for i in rows])
    return torch.cat(chunks)[torch.argsort(order)]


def build_batch(prompts: list[list[int]], continuations: list[list[int]], pad_id: int) -> Batch:
    """Rows ``prompt + continuation[:-1]``; targets are the continuation tokens.

    The last token of a continuation is never fed: nothing is predicted from it.
    """
    rows = [p + c[:-1] for p, c in zip(prompts, continuations)]
    width = max(len(r) for r in rows)
    keep = max(len(c) for c in continuations)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), keep), IGNORE, dtype=torch.long)
    for i, (row, cont) in enumerate(zip(rows, continuations)):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
        targets[i, keep - len(cont):] = torch.tensor(cont, dtype=torch.long)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(ids, mask, positions, targets, len(rows))


def forward_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Logits (B, K, V) at the last ``K`` positions only.

    The positions go to ``logits_to_keep`` as an index tensor, not an int: indexing gathers a
    contiguous (B, K, H) block, so the LM head is one matrix product whose backward needs no
    copy of the (V, H) weight, where the strided slice an int gives is a batched product
    (measured on Gemma 3 270M, CPU: ~2.3x less time for the head's forward + backward). Negative
    indices count from the end, so prompt methods that lengthen the sequence are unaffected.
    """
    keep = torch.arange(-batch.keep, 0, device=batch.input_ids.device)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=batch.position_ids, logits_to_keep=keep, use_cache=False)
    return out.logits[:, -batch.keep:, :]


def prompt_last_logits(model: torch.nn.Module, prompts: list[list[int]], pad_id: int,
                       device: torch.device) -> torch.Tensor:
    """(B, V) logits after each prompt's last token, the prompts left-padded into one batch, in
    the dtype the model computes them (bf16 under bf16 autocast)."""
    batch = build_batch(prompts, [[0]] * len(prompts), pad_id).to(device)
    return forward_logits(model, batch)[:, -1, :]


def hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft or peftops wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _frozen_plain_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The HF model whose ``lm_head`` a fused loss may bypass, or None.

    Eligible: a CPU model whose head is a plain bias-free ``nn.Linear`` with a frozen weight
    (LoRA, adapters, prompt and prefix tuning; not FFT, not BitFit with ``lm_head``) and no
    final-logit soft-capping (Gemma 3 has none; Gemma 2 does).
    """
    inner = hf_model(model)
    head = getattr(inner, "lm_head", None)
    cfg = getattr(inner, "config", None)
    if (type(head) is not torch.nn.Linear or head.bias is not None or head.weight.requires_grad
            or head.weight.device.type != "cpu"
            or getattr(getattr(cfg, "text_config", cfg), "final_logit_softcapping", None) is not None):
        return None
    return inner


def supervised_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Summed cross-entropy over the batch's supervised tokens (fp32, a scalar).

    On CPU with a frozen head, the model is run with its LM head bypassed (it returns the hidden
    states at the kept positions) and the head and the loss are computed together by
    ``peftops.training.kernels.head_cross_entropy``, which reads the 262k x 640 head weight once instead
    of twice per step and never forms the logits. Otherwise: logits, then ``F.cross_entropy``.
    """
    inner = _frozen_plain_head(model)
    if inner is None:
        logits = forward_logits(model, batch)
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(),
                                                 ignore_index=IGNORE, reduction="sum")
    from peftops.training.kernels import head_cross_entropy

    head = inner.lm_head
    inner.lm_head = torch.nn.Identity()  # the model now returns hidden states as "logits"
    try:
        hidden = forward_logits(model, batch)
    finally:
        inner.lm_head = head
    targets = batch.targets.flatten()
    rows = targets != IGNORE
    return head_cross_entropy(hidden.flatten(0, 1)[rows], head.weight, targets[rows])


def length_bucketed_batches(lengths: list[int], batch_size: int, seed: int, epoch: int,
                            bucket_factor: int = 50) -> list[list[int]]:
    """One epoch of batches: shuffled, then sorted by length within buckets, batches shuffled.

    Rows of similar length share a batch, so little compute goes to padding, while the
    order stays random across buckets. Deterministic in (seed, epoch), which makes resuming
    from a data position exact.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * bucket_factor
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        bucket = sorted(order[start:start + span], key=lambda i: lengths[i])
        batches.extend(bucket[j:j + batch_size] for j in range(0, len(bucket), batch_size))
    rng.shuffle(batches)
    return batches


def split_by_tokens(widths: list[int], budget: int) -> list[list[int]]:
    """Split a batch's rows (given their widths, in order) into consecutive groups whose padded
    size (rows x widest row) stays within ``budget`` tokens; a row wider than the budget goes alone.
    ``budget=0`` keeps the batch whole.

    A batch of 8 long rows then runs as a few smaller forwards whose gradients are summed: the same
    update, with activation memory bounded by the budget instead of by the longest batch.
    """
    if budget <= 0 or not widths:
        return [list(range(len(widths)))]
    groups: list[list[int]] = [[]]
    widest = 0
    for i, w in enumerate(widths):
        if groups[-1] and (len(groups[-1]) + 1) * max(widest, w) > budget:
            groups.append([])
            widest = 0
        groups[-1].append(i)
        widest = max(widest, w)
    return groups

