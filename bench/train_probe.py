# .venv/bin/python bench/train_probe.py [--steps 6] [--threads 1] [--precision fp32|bf16] [--memory] [--method lora|full] [--shapes]
"""Where a peftops LoRA training step's memory and time go, on the real Gemma 3 270M.

Two measurements behind BENCHMARKS.md's "what bounds it" paragraphs, on the same snapshot and
SST-2 split as ``bench/train_bench.py`` (run that once first: it prepares the split):

  1. resident memory after each import the training process needs (torch, transformers'
     modeling code, peft's LoRA) and after loading the model: the floor under any trainer;
  2. a torch.profiler table of ``--steps`` LoRA (or, ``--method full``, FFT) training steps (after two untimed ones), with
     activation checkpointing, as ``peftops.training.loop.train`` runs them, in ``--precision``
     (bf16: the frozen base in bf16, LoRA in fp32, products under autocast, as the loop does);
     ``--memory`` adds where the step's resident memory peaks (forward, backward, optimizer) and
     the profiler's largest allocations; ``--shapes`` the matrix products by their operands' shapes
     (what a product of each shape costs in the step, as against ``bench/kernels_bench.py --products``);
  3. what loading the tokenizer adds (peftops trains on tokenized splits and does not load it).
"""

from __future__ import annotations

import argparse
import contextlib
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
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--memory", action="store_true", help="also where the step's memory peaks")
    ap.add_argument("--shapes", action="store_true", help="also the matrix products by operand shapes")
    ap.add_argument("--method", choices=("lora", "full"), default="lora",
                    help="lora (the bench's LoRA) or full (FFT, fp32 master weights; bf16 products with bf16)")
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
    from peftops.training.kernels import fuse_rms_norms
    from peftops.training.memory import PeakMemory, set_mmap_threshold, trim_heap
    from peftops.training.loop import hf_model
    from peftops.training.precision import autocast, place_parameters, storage_dtype

    torch.set_num_threads(args.threads)
    bench_args = argparse.Namespace(steps=30, batch=8, warmup=3, train=480, dev=200, seed=0, home=None,
                                    threads=args.threads, checkpointing=True,
                                    task=tb.CLS_TASK, gen_dev=50)
    _, snap, train_path, _ = tb._setup(bench_args)
    split = load_prepared(train_path)
    before = rss_mb()
    method = get_method(args.method)
    method_values = tb.LORA if args.method == "lora" else tb.FULL
    base = load_model(snap, "cpu", storage_dtype(args.precision, method))
    print(f"load model ({args.precision})                +{rss_mb() - before:4d} MB  -> {rss_mb()} MB "
          "(fp32: memory-mapped, weights become resident as a step reads them)")

    torch.manual_seed(0)
    model = place_parameters(method.apply(base, make_config(args.method, method_values)), args.precision)
    fuse_rms_norms(model)  # as peftops.training.loop.train does
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=method_values["lr"], fused=True)
    set_mmap_threshold()
    hf_model(model).activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    order = length_bucketed_batches([len(x) + 1 for x in split.input_ids], 8, 0, 0)
    pad = pad_token_id(snap)

    phases: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(name: str):
        """With --memory, the peak RSS of the block (``PeakMemory`` collects garbage on entry, so
        its time is not the loop's); otherwise nothing."""
        if not args.memory:
            yield
            return
        with PeakMemory() as mem:
            yield
        phases[name] = max(phases.get(name, 0.0), mem.peak_mb)

    def step(i: int) -> None:
        rows = order[i]
        b = build_batch([split.input_ids[r] for r in rows],
                        [split.label_token_ids[split.labels[r]] for r in rows], pad)
        with phase("forward"), autocast("cpu", args.precision):
            loss = supervised_loss(model, b) / len(rows)
        trim_heap()
        with phase("backward"):
            loss.backward()
        with phase("optimizer"):
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        trim_heap()

    for i in range(2):
        step(i)
    floor = rss_mb()
    phases.clear()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=args.memory, record_shapes=args.shapes) as prof:
        for i in range(2, 2 + args.steps):
            step(i)
    print(f"after {2 + args.steps} steps: {rss_mb()} MB resident; between steps {floor} MB"
          + "".join(f"; {k} peak {v:.0f} MB (+{v - floor:.0f})" for k, v in phases.items()))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=44))
    if args.memory:
        print(prof.key_averages().table(sort_by="self_cpu_memory_usage", row_limit=12))
    if args.shapes:
        products = sorted((e for e in prof.key_averages(group_by_input_shape=True) if e.key in ("aten::mm", "aten::addmm")),
                          key=lambda e: -e.self_cpu_time_total)
        print(f"matrix products: {sum(e.self_cpu_time_total for e in products) / 1e3:.0f} ms in all; by shape:")
        for e in products[:16]:
            print(f"  {e.key:11s} {e.count:5d} calls {e.self_cpu_time_total / 1e3:8.1f} ms "
                  f"{e.self_cpu_time_total / max(e.count, 1):7.0f} us a call  {e.input_shapes}")

    from peftops.model.snapshot import load_tokenizer

    before = rss_mb()
    tok = load_tokenizer(snap)  # what a trainer that tokenizes for itself keeps (the peer does)
    print(f"load the tokenizer ({len(tok):,} entries)  +{rss_mb() - before:4d} MB")


if __name__ == "__main__":
    main()
