# .venv/bin/python bench/kernels_bench.py [--rounds 5] [--chunks 512,2048,8192] [--dtype fp32|bf16] [--products]
"""peftops' CPU kernels against the stock ops they replace, side by side in one process.

  dropout: ``MaskDropout`` against ``F.dropout``, forward + backward of one LoRA input of the
           shape a Gemma 3 270M SST-2 batch gives (8 rows x 40 tokens, 640 and 2,048 features);
  mask:    multiplying that input by a dropout mask held as bool (stock) and as its uint8 view
           (what ``MaskDropout`` does), forward only;
  norm:    ``gemma_rms_norm`` against transformers' ``Gemma3RMSNorm``, forward + backward, on the
           hidden states (8 x 40 x 640) and on the per-head q/k norms' input (8 x 4 x 40 x 256);
  lora:    ``FusedLoraLinear`` (scaling folded into B, the sum inside one addmm) against peft's LoRA
           ``Linear``, forward + backward of the MLP's 640 -> 2,048 projection with r = 16 and
           dropout 0.05 (peftops' mask in both), under bf16 autocast with ``--dtype bf16``;
  head:    ``head_cross_entropy`` against logits + ``F.cross_entropy``, forward + backward to the
           hidden states, 8 label rows through a 262,144 x 640 head (random weights of the real
           shape: the cost is the shape's, not the values').

``--products`` times plain matrix products in fp32 against bf16 instead: the most any bf16 step can
gain on this CPU. ``--dtype bf16`` times both in bf16 (inputs and head weight in bf16; the stock pair's logits in
bf16, then fp32 for the loss, as under autocast). One torch thread, as in ``make bench-train``. Each figure is the median of ``--rounds`` rounds,
the two contenders alternating; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from peftops.training.kernels import HEAD_CHUNK, MaskDropout, gemma_rms_norm, head_cross_entropy  # noqa: E402


def _ms(fn, reps: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def _race(fns: dict, rounds: int, reps: int) -> dict[str, float]:
    """Median ms of each contender over ``rounds`` rounds, the contenders alternating."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(_ms(fn, reps))
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chunks", default=str(HEAD_CHUNK),
                    help="comma-separated head chunk sizes (vocabulary rows) to time")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--products", action="store_true",
                    help="instead: plain matrix products, fp32 against bf16 (what bf16 can buy on this CPU)")
    a = ap.parse_args()
    if a.products:
        return products(a.rounds)
    dt = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out: dict[str, dict[str, float]] = {}

    drop = MaskDropout(0.05).train()
    for feats in (640, 2048):
        x = torch.randn(8, 40, feats, dtype=dt, requires_grad=True)
        g = torch.randn_like(x)
        out[f"dropout_8x40x{feats}"] = _race({"stock": lambda: F.dropout(x, 0.05, True).backward(g),
                                              "peftops": lambda: drop(x).backward(g)}, a.rounds, 20)
    x = torch.randn(8, 40, 640, dtype=dt)
    keep = torch.rand(x.shape) > 0.05
    out["mask_mul_8x40x640"] = _race({"stock": lambda: torch.mul(x, keep),
                                      "peftops": lambda: torch.mul(x, keep.view(torch.uint8))}, a.rounds, 50)

    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    for shape in ((8, 40, 640), (8, 4, 40, 256)):
        norm = Gemma3RMSNorm(shape[-1]).requires_grad_(False).to(dt)
        x = torch.randn(shape, dtype=dt, requires_grad=True)
        g = torch.randn_like(x)
        out["norm_" + "x".join(map(str, shape))] = _race(
            {"stock": lambda: norm(x).backward(g),
             "peftops": lambda: gemma_rms_norm(x, norm.weight, norm.eps).backward(g)}, a.rounds, 20)

    from peft import LoraConfig, get_peft_model

    from peftops.methods.lora.fused import fuse_lora_linears
    from peftops.training.kernels import replace_dropouts

    pair = {}
    for name in ("stock", "peftops"):
        torch.manual_seed(0)
        body = torch.nn.Sequential(torch.nn.Linear(640, 2048, bias=False)).to(dt)
        peft_model = get_peft_model(body, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["0"]))
        replace_dropouts(peft_model, "lora_dropout")
        if name == "peftops":
            assert fuse_lora_linears(peft_model) == 1
        pair[name] = peft_model.train()
    x = torch.randn(8, 40, 640, dtype=dt)
    g = torch.randn(8, 40, 2048, dtype=dt)

    def lora_step(model):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dt == torch.bfloat16):
            y = model(x)
        y.backward(g)

    out["lora_8x40_640to2048"] = _race({n: functools.partial(lora_step, m) for n, m in pair.items()}, a.rounds, 20)

    weight = (torch.randn(262_144, 640) * 0.02).to(dt)
    hidden = torch.randn(8, 640, dtype=dt, requires_grad=True)
    targets = torch.randint(0, weight.shape[0], (8,))
    for chunk in (int(c) for c in a.chunks.split(",")):
        out[f"head_8rows_chunk{chunk}"] = _race(
            {"stock": lambda: F.cross_entropy((hidden @ weight.T).float(), targets, reduction="sum").backward(),
             "peftops": lambda: head_cross_entropy(hidden, weight, targets, chunk).backward()}, a.rounds, 3)

    _print_table(out, "ms (mask: forward only)", "stock", "peftops")
    print(json.dumps({"dtype": a.dtype, **out}))


def _print_table(out: dict[str, dict[str, float]], title: str, slow: str, fast: str) -> None:
    """One row per entry of ``out``: its two contenders' ms and their ratio (stored as ``speedup``)."""
    print(f"{title:28} {slow:>9} {fast:>9} {'ratio':>6}")
    for name, r in out.items():
        r["speedup"] = round(r[slow] / r[fast], 2)
        print(f"{name:28} {r[slow]:9.3f} {r[fast]:9.3f} {r['speedup']:5.2f}x")


# (rows, inner, cols): the three (a LoRA step's 256-row products, an eighth of the head) and a
# SST-2 batch's 320 rows (8 x 40 tokens) through the MLP.
PRODUCTS = ((256, 640, 2048), (256, 2048, 640), (512, 640, 32768), (320, 640, 2048))


def products(rounds: int) -> None:
    """fp32 against bf16 on the products of ``PRODUCTS``, one thread; the bound on any bf16 speed-up."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out: dict[str, dict[str, float]] = {}
    for m, k, n in PRODUCTS:
        x, w = torch.randn(m, k), torch.randn(k, n)
        xb, wb = x.bfloat16(), w.bfloat16()
        out[f"mm_{m}x{k}x{n}"] = _race({"fp32": lambda: x @ w, "bf16": lambda: xb @ wb}, rounds, 10)
    _print_table(out, "ms", "fp32", "bf16")
    print(json.dumps({"products": out}))


if __name__ == "__main__":
    main()
