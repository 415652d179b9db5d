# .venv/bin/python bench/head_probe.py [--home HOME] [--batch 16]
"""The greedy decoder's first forward (the prompts' prefill) on the real Gemma 3 270M, base vs a
BitFit-applied model (frozen LM head), with the last position passed to ``logits_to_keep`` as the
int 1 (a strided slice into the head) and as an index tensor (a contiguous gather), in bf16, one
thread. Prints seconds per prefill (best of ``--runs``) for each."""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default=None, help="state directory holding the pinned snapshot")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from peftops.config import BaseConfig
    from peftops.methods import get_method, make_config
    from peftops.model.snapshot import load_model, load_tokenizer, open_snapshot, snapshot_dir
    from peftops.training.batching import build_batch
    from peftops.training.precision import autocast

    snap = open_snapshot(snapshot_dir(BaseConfig().name, args.home))
    tok = load_tokenizer(snap)
    prompts = [tok("Rewrite the sentence in other words.\nSentence: the film was good " + "x " * i)["input_ids"]
               for i in range(args.batch)]
    batch = build_batch(prompts, [[0]] * len(prompts), 0)
    for name in ("base", "bitfit"):
        model = load_model(snap, dtype=torch.bfloat16)
        if name != "base":
            model = get_method(name).apply(model, make_config(name, {}))
        model.eval()
        for label, keep in (("int 1", 1), ("index [-1]", torch.tensor([-1]))):
            best = float("inf")
            for _ in range(args.runs):
                t0 = time.perf_counter()
                with torch.no_grad(), autocast(torch.device("cpu"), "bf16"):
                    model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          position_ids=batch.position_ids, use_cache=True, logits_to_keep=keep)
                best = min(best, time.perf_counter() - t0)
            print(f"{name:7} logits_to_keep={label:11} {best:7.2f} s per prefill of {len(prompts)} prompts",
                  flush=True)


if __name__ == "__main__":
    main()
