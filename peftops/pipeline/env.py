"""Offline and quiet defaults, applied before heavy imports (a user's explicit setting wins)."""

from __future__ import annotations

import os

DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    # Prefect's temporary server (no PREFECT_API_URL) must come up within this; its 20 s default
    # is too short on a loaded 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # oneDNN (torch's bf16 products on CPU) keeps a compiled kernel per matrix shape, 1,024 of them
    # by default; length-bucketed batches bring new shapes all run long, and a bf16 training's resident
    # memory grows with them (peak 1,429 -> 1,257 MB with 64: BENCHMARKS.md "bf16"). oneDNN reads
    # this when it creates its first kernel, so it takes effect even after torch is imported.
    "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64",
    # torch's CPU allocator page-aligns buffers of 2 MB and more and asks the kernel for
    # transparent huge pages on them (madvise). What it buys: a step's fresh, gigabyte-sized buffers (FFT's fp32 gradients,
    # the embedding's dense gradient, autocast's bf16 copies) are faulted in 2 MB at a time, not
    # 4 KB (BENCHMARKS.md "bf16", huge pages). torch reads it at its first allocation, during
    # ``import torch``, so it must be set before that import.
    "THP_MEM_ALLOC_ENABLE": "1",
}


def apply_defaults() -> None:
    """Set each default unless the environment already has a value."""
    for k, v in DEFAULTS.items():
        os.environ.setdefault(k, v)
