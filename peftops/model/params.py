"""Counting a model's parameters."""

from __future__ import annotations

import torch


def count_params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Parameters counted once each: tied weights (Gemma's LM head is its input embedding) are one
    ``Parameter`` and count once. By identity, so it also counts a model on the ``meta`` device,
    whose tensors have no storage to compare."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if (trainable_only and not p.requires_grad) or id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total
