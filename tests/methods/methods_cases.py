"""Shared cases for the method tests: a tiny Gemma 3 whose sliding window holds the prompt
methods' virtual tokens, a learnable overfit set, and each method's intended parameters."""

from __future__ import annotations

import torch

from peftops.data.prepared import PreparedSplit


def tiny_wide(seed: int = 0, window: int = 64):
    """tests/tiny.py's model with a wider sliding window (prefix tuning needs n + width <= window)."""
    from transformers import Gemma3ForCausalLM

    from tiny import tiny_config

    cfg = tiny_config()
    cfg.sliding_window = window
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(cfg)
    model.eval()
    return model


def overfit_split(n: int = 16) -> PreparedSplit:
    """Prompt ``2 a b`` -> label token 40 if ``a`` is even else 41 (a rule a tiny model can learn)."""
    ids = [[2, 5 + (i % 7), 20 + i % 3] + [30] * (i % 4) for i in range(n)]
    labels = [(i % 7) % 2 for i in range(n)]
    return PreparedSplit(task="t", split="train", verbalizers=[" x", " y"], label_token_ids=[[40], [41]],
                         input_ids=ids, labels=labels, lines=list(range(n)), source="mem", source_sha256="")


def is_norm_name(name: str) -> bool:
    return name.endswith("norm.weight")


# case id -> (method name, config values, predicate on parameter names: what may train)
CASES = {
    "lora": ("lora", {"lr": 2e-2, "r": 4, "alpha": 8, "dropout": 0.0}, lambda n: "lora_" in n),
    "lora-dora": ("lora", {"lr": 2e-2, "r": 4, "alpha": 8, "dropout": 0.0, "use_dora": True},
                  lambda n: "lora_" in n),
    "lora-rslora-qv": ("lora", {"lr": 5e-2, "r": 4, "alpha": 8, "dropout": 0.0, "use_rslora": True,
                                "target_modules": ["q_proj", "v_proj"]},
                       lambda n: "lora_" in n and (".q_proj." in n or ".v_proj." in n)),
    "adapter": ("adapter", {"lr": 3e-2, "bottleneck": 8}, lambda n: ".houlsby." in n or is_norm_name(n)),
    "bitfit": ("bitfit", {"lr": 5e-2}, lambda n: n.endswith("_proj.bias") or is_norm_name(n)),
    "prompt": ("prompt", {"lr": 3e-1, "num_virtual_tokens": 8}, lambda n: "prompt_encoder" in n),
    "prefix": ("prefix", {"lr": 3e-1, "num_virtual_tokens": 8}, lambda n: "prompt_encoder" in n),
    "prefix-projection": ("prefix", {"lr": 3e-2, "num_virtual_tokens": 8, "projection": True,
                                     "projection_hidden": 16}, lambda n: "prompt_encoder" in n),
    "full": ("full", {"lr": 5e-3}, lambda n: True),
}
