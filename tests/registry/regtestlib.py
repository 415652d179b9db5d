"""Builders of tiny fake bases and PEFT-format adapters for the registry tests.

Kept import-light (numpy + safetensors, no torch) so spawned worker processes start fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

HIDDEN, KV, INTER, LAYERS, VOCAB = 32, 16, 64, 2, 128
DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32

# Linear layers of the fake base: name -> [out, in] (as a Gemma-3-style decoder lays them).
LINEARS = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (KV, HIDDEN),
           "self_attn.v_proj": (KV, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
           "mlp.gate_proj": (INTER, HIDDEN), "mlp.up_proj": (INTER, HIDDEN),
           "mlp.down_proj": (HIDDEN, INTER)}


def make_base(root: Path, seed: int = 0) -> Path:
    """A snapshot dir: config.json + model.safetensors with a few small linear weights."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    t = {"model.embed_tokens.weight": rng.standard_normal((VOCAB, HIDDEN), dtype=np.float32),
         "model.norm.weight": np.ones(HIDDEN, dtype=np.float32)}
    for i in range(LAYERS):
        for name, shape in LINEARS.items():
            t[f"model.layers.{i}.{name}.weight"] = rng.standard_normal(shape, dtype=np.float32)
    save_file(t, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps(
        {"model_type": "gemma3_text", "hidden_size": HIDDEN, "num_hidden_layers": LAYERS}))
    return root


def make_adapter(root: Path, seed: int = 0, *, r: int = 4,
                 targets: tuple[str, ...] = ("q_proj", "v_proj"), shape_fn=None,
                 extra_config: dict | None = None, extra_tensors: dict | None = None) -> Path:
    """A PEFT LoRA folder for the fake base; `seed` changes the weights (and so the id)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    t = {}
    for i in range(LAYERS):
        for name, (out_f, in_f) in LINEARS.items():
            if name.split(".")[-1] not in targets:
                continue
            key = f"base_model.model.model.layers.{i}.{name}"
            a, b = (r, in_f), (out_f, r)
            if shape_fn is not None:
                a, b = shape_fn(key, a, b)
            t[f"{key}.lora_A.weight"] = rng.standard_normal(a, dtype=np.float32)
            t[f"{key}.lora_B.weight"] = rng.standard_normal(b, dtype=np.float32)
    t.update(extra_tensors or {})
    save_file(t, str(root / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r,
           "lora_dropout": 0.0, "target_modules": list(targets), "use_dora": False,
           "modules_to_save": None, "bias": "none",
           "base_model_name_or_path": f"/somewhere/{seed}", "inference_mode": True}
    cfg.update(extra_config or {})
    (root / "adapter_config.json").write_text(json.dumps(cfg))
    return root


def publish_many(db_url: str, blob_uri: str, worker: int, n: int, tasks: list[str],
                 tmp: str) -> list[tuple[str, int, str]]:
    """Worker of the concurrency tests: publish n distinct adapters round-robin to tasks."""
    from registry import Registry

    reg = Registry.open(db_url, blob_uri)
    out = []
    try:
        for i in range(n):
            d = make_adapter(Path(tmp) / f"w{worker}" / f"a{i}", seed=10_000 * (worker + 1) + i,
                             r=2)
            v = reg.publish(tasks[i % len(tasks)], d, base_digest=DIGEST, method="lora",
                            metrics={"acc": i / n}, tags={"worker": str(worker)})
            out.append((v.task, v.version, v.adapter_id))
    finally:
        reg.close()
    return out
