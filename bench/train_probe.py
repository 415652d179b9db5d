# .venv/bin/python bench/train_probe.py [--steps 6] [--threads 1]
"""Where a peftops LoRA training step's memory and time go, on the real Gemma 3 270M.

Two measurements behind BENCHMARKS.md's "what bounds it" paragraphs, on the same snapshot and
SST-2 split as ``bench/train_bench.py`` (run that once first: it prepares the split):

  1. resident memory after each import the training process needs (torch, transformers'
     modeling code, peft's LoRA) and after loading the model: the floor under any trainer;
  2. a torch.profiler table of ``--steps`` LoRA training steps (after two untimed ones), with
     activation checkpointing, as ``peftops.training.loop.train`` runs them;
  3. what loading the tokenizer adds (peftops trains on tokenized splits and does not load it).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from peftops.pipeline.env import apply_defaults  # noqa: E402

apply_defaults()


def rss_mb() -> int:
    """This process's resident set, MB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="profiled steps")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    print(f"resident at start: {rss_mb()} MB")
    for mod in ("torch", "transformers.modeling_utils", "peft.tuners.lora"):
        before = rss_mb()
        importlib.import_module(mod)
        print(f"import {mod:30s} +{rss_mb() - before:4d} MB  -> {rss_mb()} MB")

    import torch
    from torch.profiler import ProfilerActivity, profile

    import train_bench as tb
    from peftops.model.snapshot import load_model, pad_token_id
    from peftops.training.batching import build_batch, length_bucketed_batches, supervised_loss
    from peftops.data.prepared import load_prepared
    from peftops.methods import get_method, make_config
    from peftops.training.memory import set_mmap_threshold, trim_heap
    from peftops.training.loop import hf_model

    torch.set_num_threads(args.threads)
    bench_args = argparse.Namespace(steps=30, batch=8, warmup=3, train=480, dev=200, seed=0, home=None,
                                    threads=args.threads, checkpointing=True)
    _, snap, train_path, _ = tb._setup(bench_args)
    split = load_prepared(train_path)
    before = rss_mb()
    base = load_model(snap)
    print(f"load model (memory-mapped)         +{rss_mb() - before:4d} MB  -> {rss_mb()} MB "
          "(weights become resident as a step reads them)")

    method = get_method("lora")
    torch.manual_seed(0)
    model = method.apply(base, make_config("lora", tb.LORA))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tb.LORA["lr"], fused=True)
    set_mmap_threshold()
    hf_model(model).activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    order = length_bucketed_batches([len(x) + 1 for x in split.input_ids], 8, 0, 0)
    pad = pad_token_id(snap)

    def step(i: int) -> None:
        rows = order[i]
        b = build_batch([split.input_ids[r] for r in rows],
                        [split.label_token_ids[split.labels[r]] for r in rows], pad)
        loss = supervised_loss(model, b) / len(rows)
        trim_heap()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        trim_heap()

    for i in range(2):
        step(i)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(2, 2 + args.steps):
            step(i)
    print(f"after {2 + args.steps} steps: {rss_mb()} MB resident")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))

    from peftops.model.snapshot import load_tokenizer

    before = rss_mb()
    tok = load_tokenizer(snap)  # what a trainer that tokenizes for itself keeps (the peer does)
    print(f"load the tokenizer ({len(tok):,} entries)  +{rss_mb() - before:4d} MB")


if __name__ == "__main__":
    main()
