"""What a model costs and breaks beyond its score: latency per example (median of timed batches
after a warm-up, per batch size) and forgetting (the mean loss on held-out general text,
``peftops.evaluation.forgetting``). The ``measure`` stage runs this once per model; comparisons
read the records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from peftops.data.prepared import PreparedSplit
from peftops.errors import ConfigError
from peftops.evaluation.evaluate import latency_per_example
from peftops.evaluation.forgetting import ForgettingConfig, GeneralTextSet, general_nll


@dataclass(frozen=True)
class MeasureConfig:
    """How latency and forgetting are measured."""

    latency_batch_sizes: tuple[int, ...] = (1, 16)
    latency_batches: int = 3  # timed batches per batch size, after one warm-up (the median is reported)
    forgetting: ForgettingConfig = field(default_factory=ForgettingConfig)

    def __post_init__(self) -> None:
        if not self.latency_batch_sizes or any(b < 1 for b in self.latency_batch_sizes):
            raise ConfigError("compare.latency_batch_sizes", "must be batch sizes >= 1")
        if self.latency_batches < 1:
            raise ConfigError("compare.latency_batches", "must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        from peftops.config import to_dict

        return {"latency_batch_sizes": list(self.latency_batch_sizes), "latency_batches": self.latency_batches,
                "forgetting": to_dict(self.forgetting)}


def measure_model(model: torch.nn.Module, dev: PreparedSplit, texts: GeneralTextSet, *, pad_id: int,
                  cfg: MeasureConfig, device: torch.device) -> dict[str, Any]:
    """``{"latency_ms": {batch size: median ms per example}, "general_nll": nats per token}``."""
    latency = {}
    for bs in cfg.latency_batch_sizes:
        sec = latency_per_example(model, dev, pad_id=pad_id, batch_size=bs, device=device,
                                  n_batches=cfg.latency_batches, warmup=1)
        latency[str(bs)] = 1000.0 * sec
    nll = general_nll(model, texts, pad_id=pad_id, batch_size=cfg.forgetting.batch_size, device=device)
    return {"latency_ms": latency, "general_nll": nll}
