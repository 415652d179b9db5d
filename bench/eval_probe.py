# python bench/eval_probe.py [--precision bf16] [--training-heap] [--profile [--shapes] [--rows N]]
"""Evaluation throughput of the bench's LoRA (untrained) on the SST-2 dev split that
``bench/train_bench.py`` prepares (200 examples, batch 16, one thread), and where its time goes.

``--training-heap`` first sets the training loop's heap policy (buffers of 256 KiB and more in
their own mappings, ``peftops.training.memory.set_mmap_threshold``) and leaves it in place, as the
loop did before ``training_heap``: what an evaluation after a training in the same process paid.
Two passes are timed (the first builds oneDNN's kernels); ``--profile`` adds a torch.profiler
table of a third. Run ``bench/train_bench.py`` once first (it prepares the split)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftops.pipeline.env import apply_defaults  # noqa: E402

apply_defaults()


def main() -> None:
    import torch

    from bench.train_bench import LORA, _data_dir
    from peftops.config import load_params
    from peftops.data.prepared import load_prepared
    from peftops.evaluation.evaluate import evaluate
    from peftops.methods import get_method, make_config
    from peftops.model.snapshot import load_model, pad_token_id
    from peftops.stages import stage_base
    from peftops.training.memory import set_mmap_threshold
    from peftops.training.precision import place_parameters, storage_dtype

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--training-heap", action="store_true", help="the training's heap policy left in place")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--shapes", action="store_true", help="the profile's rows per input shape")
    ap.add_argument("--rows", type=int, default=20, help="rows of the profile's table")
    ap.add_argument("--home", default=None)
    ap.add_argument("--train", type=int, default=480, help="train_bench's --train (names its split)")
    ap.add_argument("--dev", type=int, default=200, help="train_bench's --dev")
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = load_params(None)
    snap = stage_base(params, args.home)
    method = get_method("lora")
    model = method.apply(load_model(snap, dtype=storage_dtype(args.precision, method)), make_config("lora", LORA))
    place_parameters(model, args.precision)  # as the training leaves it: LoRA's weights fp32
    dev = load_prepared(_data_dir(args) / "dev.json")
    pad = pad_token_id(snap)
    if args.training_heap:
        set_mmap_threshold()
    for name in ("first pass", "second pass"):
        ev = evaluate(model, dev, pad_id=pad, batch_size=16, precision=args.precision)
        print(f"{args.precision} {name}: {ev.examples_per_s:.2f} examples/s ({ev.eval_time_s:.2f} s)")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
            t0 = time.perf_counter()
            evaluate(model, dev, pad_id=pad, batch_size=16, precision=args.precision)
        print(f"profiled pass {time.perf_counter() - t0:.2f} s")
        print(prof.key_averages(group_by_input_shape=args.shapes).table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
