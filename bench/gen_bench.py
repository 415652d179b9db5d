"""Greedy generation: peftops' KV-cache loop against transformers' ``generate`` (left padding).

    python bench/gen_bench.py [--real HOME] [--batch 16] [--new 32]

Without ``--real`` it runs on the tiny in-code Gemma 3 of the tests (a smoke run); with it, on
the pinned snapshot under HOME. Prints the median seconds of each over a few runs and whether the
outputs agree token for token.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", help="state dir holding the pinned snapshot")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    from peftops.evaluation.generate import greedy_generate

    if args.real:
        from peftops.config import BaseConfig
        from peftops.model.snapshot import load_model, load_tokenizer, open_snapshot, snapshot_dir

        snap = open_snapshot(snapshot_dir(BaseConfig().name, args.real))
        tok, model = load_tokenizer(snap), load_model(snap)
    else:
        from tiny import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer()
        model = tiny_model(vocab_size=len(tok))
    words = "the film was a very good and moving story but the plot is quite dull".split()
    prompts = [tok(" ".join(words[: 3 + i % 10]))["input_ids"] for i in range(args.batch)]
    enc = tok.pad({"input_ids": prompts}, return_tensors="pt")
    times = {"peftops": [], "generate": []}
    outs = {}
    with torch.no_grad():
        for _ in range(args.runs):
            t0 = time.perf_counter()
            outs["peftops"] = greedy_generate(model, prompts, pad_id=tok.pad_token_id, stop_ids=[],
                                              max_new_tokens=args.new).ids
            times["peftops"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            got = model.generate(**enc, max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=None)
            times["generate"].append(time.perf_counter() - t0)
            outs["generate"] = [row[enc["input_ids"].shape[1]:].tolist() for row in got]
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"batch {args.batch}, {args.new} new tokens: peftops {med['peftops']:.3f} s, generate "
          f"{med['generate']:.3f} s (ratio {med['peftops'] / med['generate']:.2f}); "
          f"identical outputs: {outs['peftops'] == outs['generate']}")


if __name__ == "__main__":
    main()
