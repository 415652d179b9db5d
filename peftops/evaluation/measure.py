"""What a model costs and breaks beyond its score: latency per example (median of timed batches
after a warm-up, per batch size) and forgetting (the mean loss on held-out general text,
``peftops.evaluation.forgetting``). The ``measure`` stage runs this once per model; comparisons
read the records."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field

from peftops.config import Config
from peftops.data.prepared import PreparedSplit
from peftops.evaluation.evaluate import timed_batches
from peftops.evaluation.forgetting import ForgettingConfig, GeneralTextSet, general_nll
from peftops.training.kernels import fuse_rms_norms
from peftops.training.precision import autocast, model_precision


BatchSizes = Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(min_length=1)]


class MeasureConfig(Config):
    """How latency and forgetting are measured."""

    config_prefix: ClassVar[str] = "compare"
    latency_batch_sizes: BatchSizes = (1, 16)
    latency_batches: Annotated[int, Field(ge=1)] = 3  # timed batches per size after one warm-up (median reported)
    forgetting: ForgettingConfig = ForgettingConfig()


def measure_model(model: torch.nn.Module, dev: PreparedSplit, texts: GeneralTextSet, *, pad_id: int,
                  cfg: MeasureConfig, device: torch.device, precision: str | None = None) -> dict[str, Any]:
    """``{"latency_ms": {batch size: median ms per example}, "general_nll": nats per token}``, in the
    run's ``precision`` (default: the one the model is stored for); a generation task adds
    ``"latency_ms_per_token"``: {batch size: median ms per generated token}."""
    precision = precision or model_precision(model)
    fuse_rms_norms(model)  # latency as served by peftops' own evaluator
    latency, per_token = {}, {}
    for bs in cfg.latency_batch_sizes:
        t = timed_batches(model, dev, pad_id=pad_id, batch_size=bs, device=device,
                          n_batches=cfg.latency_batches, warmup=1, precision=precision)
        latency[str(bs)] = 1000.0 * t["s_per_example"]
        if "s_per_token" in t:
            per_token[str(bs)] = 1000.0 * t["s_per_token"]
    with autocast(device, precision):
        nll = general_nll(model, texts, pad_id=pad_id, batch_size=cfg.forgetting.batch_size, device=device)
    out: dict[str, Any] = {"latency_ms": latency, "general_nll": nll}
    if per_token:
        out["latency_ms_per_token"] = per_token
    return out
