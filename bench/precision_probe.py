# python bench/precision_probe.py [--layers 4] [--reps 8]
"""bf16 by autocast or by explicit casts: one LoRA (r=16, all linear) forward + backward on a Gemma 3
body of the 270M model's widths (hidden 640, MLP 2,048, 4 heads of 256, 1 KV head; ``--layers``
layers, a 1,024-token vocabulary so the body dominates), batch 8 x 40, one thread, median of
``--reps`` interleaved steps. Variants: fp32; bf16 base under autocast with LoRA's input kept in
bf16 (peftops' bf16) or copied to fp32 first (peft's default); bf16 base without autocast (peft then
computes the LoRA path in fp32: the explicit-cast alternative)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from peftops.methods import get_method, make_config
    from peftops.training.precision import autocast, place_parameters

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--reps", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = Gemma3TextConfig(vocab_size=1024, hidden_size=640, intermediate_size=2048, num_hidden_layers=args.layers,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                           layer_types=["sliding_attention"] * args.layers, tie_word_embeddings=True, pad_token_id=0)

    def build(precision: str, lora_input_fp32: bool):
        torch.manual_seed(0)
        model = get_method("lora").apply(Gemma3ForCausalLM(cfg), make_config("lora", {"r": 16, "alpha": 32,
                                                                                      "dropout": 0.05}))
        place_parameters(model, precision)
        for module in model.modules():
            if lora_input_fp32 and hasattr(module, "_cast_input_dtype"):
                module.cast_input_dtype_enabled = True
        return model.train()

    x = torch.randint(3, 1000, (8, 40))
    variants = {"fp32": (build("fp32", False), False),
                "bf16 autocast, LoRA input bf16": (build("bf16", False), True),
                "bf16 autocast, LoRA input fp32": (build("bf16", True), True),
                "bf16 base, no autocast": (build("bf16", True), False)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.reps + 1):
        for name, (model, ac) in variants.items():
            t0 = time.perf_counter()
            with autocast("cpu", "bf16") if ac else contextlib.nullcontext():
                out = model(input_ids=x, logits_to_keep=1).logits
            out.float().sum().backward()
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        ts = sorted(ts[1:])
        print(f"{name:34s} {1000 * ts[len(ts) // 2]:7.0f} ms")


if __name__ == "__main__":
    main()
