# .venv/bin/python -m bench.corun_bench [--task sst2] [--steps 20] [--rounds 2] [--warm] [--evaluate-first] [--home DIR]
"""Two trainings side by side against one alone: what bounds the fleet's two 1-CPU workers.

``bench/fleet_bench.py --runners`` compares Ray with two 1-CPU workers (c) against twice one
1-CPU worker alone (d, "the ideal") and against the local runner's one 2-thread process (a).
Those runs carry whole pipelines (evaluation, merge, MLflow, Prefect, Ray). This bench keeps only
the training stage (``peftops.stages.stage_train``, the function a fleet task's training calls,
without the MLflow tracking and the Prefect task run around it: the embedded parameters at
``--steps``, precision ``auto``, the real Gemma 3 270M), each in a fresh process:

  alone-1t   one process, one torch thread, the other core idle       (a (d) worker's training)
  alone-2t   one process, two torch threads                          (the local runner's training)
  together   two processes at once, one thread each                  (a (c) worker's training)

and reports seconds per training step of each, the slowdown of a one-thread training beside
another (together / alone-1t), and the two ratios the fleet bench's targets are about, for the
training alone: two together against one 2-thread process (2 x alone-2t / together) and against
twice one alone (alone-1t / together). Rounds alternate the three, so that a drift of the host
is shared. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from peftops.pipeline.env import apply_defaults  # noqa: E402

apply_defaults()


def bench_params(task: str, steps: int, data_root: str | None):
    """The embedded parameters for ``task`` at ``steps`` training steps (warm-up capped as the fleet bench does)."""
    from peftops.config import default_data_root, for_task, load_params

    p = for_task(load_params(None), task)
    return p.model_copy(update={
        "data": p.data.model_copy(update={"data_root": data_root or str(default_data_root())}),
        "train": p.train.model_copy(update={"steps": steps, "warmup_steps": min(p.train.warmup_steps, steps)})})


def child(home: str, task: str, steps: int, threads: int, data_root: str | None, warm: bool = False,
          evaluate_first: bool = False) -> None:
    """One training in this process; prints its seconds per step as JSON. ``warm``: as in a fleet's
    warm worker, the base is loaded once and the training gets a copy of it (``load_model``);
    ``evaluate_first``: the base is evaluated on the dev split first, as a task's pipeline does."""
    import torch

    from peftops.stages import stage_train

    torch.set_num_threads(threads)
    params = bench_params(task, steps, data_root)
    if warm:
        from peftops.methods import get_method
        from peftops.model.snapshot import load_model, open_snapshot
        from peftops.stages import Layout
        from peftops.training.precision import resolve_precision, storage_dtype

        os.environ["PEFTOPS_WARM_BASE"] = "1"
        snap = open_snapshot(Layout.of(home).base(params.base.name), params.base.expected_digest)
        precision = resolve_precision(params.train.precision, "cpu")
        load_model(snap, "cpu", storage_dtype(precision, get_method("lora")), read_only=True)
    if evaluate_first:
        from peftops.stages import stage_evaluate

        stage_evaluate(params, None, home)
    res = stage_train(params, "lora", home, progress=False, resume=False)
    print(json.dumps({"steps": res.steps, "train_time_s": res.train_time_s,
                      "s_per_step": res.train_time_s / res.steps, "threads": torch.get_num_threads()}))


def _child_home(root: Path, shared: Path, name: str) -> Path:
    """A state directory of its own under ``root`` (its run folder) that shares ``shared``'s base
    snapshot and prepared data."""
    home = root / name
    home.mkdir()
    for sub in ("base", "data"):
        (home / sub).symlink_to(shared / sub, target_is_directory=True)
    return home


def _start(home: Path, args, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "bench.corun_bench", "--child", str(home), "--task", args.task,
           "--steps", str(args.steps), "--threads", str(threads)]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    cmd += ["--warm"] * args.warm + ["--evaluate-first"] * args.evaluate_first
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)


def _collect(procs: list[subprocess.Popen]) -> list[float]:
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a training process failed (exit {p.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1])["s_per_step"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="sst2", help="a task of the shipped manifest")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--home", help="a state directory to reuse (its base snapshot and prepared data)")
    ap.add_argument("--data-root")
    ap.add_argument("--warm", action="store_true",
                    help="each training copies a base its process loaded first, as a fleet's warm worker does")
    ap.add_argument("--evaluate-first", action="store_true",
                    help="each process evaluates the base on the dev split before it trains, as a task's pipeline does")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.task, args.steps, args.threads, args.data_root, args.warm, args.evaluate_first)
        return

    from peftops.stages import stage_base, stage_prepare

    root = Path(tempfile.mkdtemp(prefix="peftops-corun-"))
    shared = Path(args.home).resolve() if args.home else root / "shared"
    params = bench_params(args.task, args.steps, args.data_root)
    stage_base(params, shared)
    stage_prepare(params, shared)
    print(f"host: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; {args.task}, {args.steps} steps a training",
          flush=True)
    runs: dict[str, list[float]] = {"alone_1t": [], "alone_2t": [], "together": []}
    n = 0
    for r in range(args.rounds):
        for kind in runs:
            t0 = time.perf_counter()
            homes = [_child_home(root, shared, f"run-{(n := n + 1)}")
                     for _ in range(2 if kind == "together" else 1)]
            threads = 2 if kind == "alone_2t" else 1
            got = _collect([_start(h, args, threads) for h in homes])
            runs[kind].extend(got)
            print(f"round {r + 1} {kind}: {', '.join(f'{s:.3f}' for s in got)} s a step "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    s = {k: statistics.median(v) for k, v in runs.items()}
    out = {"task": args.task, "steps": args.steps, "rounds": args.rounds, "warm": args.warm,
           "evaluate_first": args.evaluate_first, "cpus": os.cpu_count(),
           "s_per_step": {k: round(v, 4) for k, v in s.items()},
           "together_slowdown": round(s["together"] / s["alone_1t"], 3),
           "together_vs_alone_2t": round(2 * s["alone_2t"] / s["together"], 3),
           "together_vs_ideal": round(s["alone_1t"] / s["together"], 3),
           "runs": {k: [round(x, 4) for x in v] for k, v in runs.items()}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
