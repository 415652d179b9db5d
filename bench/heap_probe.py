# .venv/bin/python bench/heap_probe.py [--method lora|full] [--precision bf16|fp32] [--threads 2]
#     [--checkpointing] [--steps 30] [--policies compact,retain] [--rounds 2]
"""The training loop's two heap policies against each other, on the real Gemma 3 270M.

``peftops.training.memory.training_heap`` either maps every buffer of 256 KiB and more apart and
trims the heap at a step's low points (``compact``: what the loop uses with activation
checkpointing) or keeps freed buffers on the heap for the next step (``retain``: without it).
This runs ``peftops.training.loop.train`` once per policy and round, each in a fresh process,
policies interleaved, on the bench's SST-2 split (``bench/train_bench.py`` prepares it), with
the policy forced whatever the checkpointing setting, and prints examples/s, the training's
peak RSS, and the process's page faults and system CPU time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from peftops.pipeline.env import apply_defaults  # noqa: E402

apply_defaults()


def child(args) -> None:
    """One training in ``args.policy``; prints its figures as JSON."""
    import torch

    import train_bench as tb
    from peftops.data.prepared import load_prepared
    from peftops.methods import get_method, make_config
    from peftops.model.params import count_params
    from peftops.model.snapshot import load_model, pad_token_id
    from peftops.training import loop
    from peftops.training.precision import storage_dtype

    torch.set_num_threads(args.threads)
    ns = argparse.Namespace(steps=args.steps, batch=8, warmup=3, train=480, dev=200, seed=0, home=None,
                            threads=args.threads, checkpointing=args.checkpointing, task=tb.CLS_TASK, gen_dev=50)
    params, snap, train_path, _ = tb._setup(ns, args.precision)
    method = get_method(args.method)
    base = load_model(snap, dtype=storage_dtype(args.precision, method))
    cfg = make_config(args.method, tb.LORA if args.method == "lora" else tb.FULL)
    torch.manual_seed(0)
    model = method.apply(base, cfg)
    # The policy is forced here; the loop itself picks it from train.activation_checkpointing.
    policy = loop.training_heap
    loop.training_heap = lambda compact: policy(compact=args.policy == "compact")
    before = resource.getrusage(resource.RUSAGE_SELF)
    with tempfile.TemporaryDirectory(prefix="heap-probe-") as tmp:
        r = loop.train(model, method, cfg, load_prepared(train_path), params.train, Path(tmp),
                       pad_id=pad_token_id(snap), base_params=count_params(base), progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"policy": args.policy, "examples_per_s": round(r.examples_per_s, 3),
                      "peak_mb": round(r.peak_memory_mb), "final_loss": round(r.losses[-1], 5),
                      "minor_faults": after.ru_minflt - before.ru_minflt,
                      "system_s": round(after.ru_stime - before.ru_stime, 1),
                      "user_s": round(after.ru_utime - before.ru_utime, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=("lora", "full"), default="lora")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--checkpointing", action="store_true", help="recompute activations (the bench's setting)")
    ap.add_argument("--policies", default="compact,retain")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--policy", help=argparse.SUPPRESS)  # a child's
    args = ap.parse_args()
    if args.policy:
        return child(args)
    import os

    print(f"{args.method} {args.precision}, {args.threads} threads, {args.steps} steps, checkpointing "
          f"{args.checkpointing}; load {os.getloadavg()[0]:.2f}")
    flags = ["--method", args.method, "--precision", args.precision, "--threads", str(args.threads),
             "--steps", str(args.steps)] + ["--checkpointing"] * args.checkpointing
    results = []
    for _ in range(args.rounds):
        for policy in args.policies.split(","):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, *flags, "--policy", policy], capture_output=True,
                                 text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            res["process_s"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(res), flush=True)
            results.append(res)
    print(json.dumps({"load_after": round(os.getloadavg()[0], 2), "runs": results}))


if __name__ == "__main__":
    main()
