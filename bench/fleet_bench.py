# .venv/bin/python -m bench.fleet_bench 1 2      (fleet wall time by max_concurrency, tiny models)
"""Measure the fleet's wall time on 4 tiny SST-2-shaped tasks (LoRA, 12 steps) for each
``max_concurrency`` given, from a fresh state, then the unchanged rerun (all cache hits).

Tiny models make the orchestration's own costs visible (Prefect, MLflow, registry, data
preparation); with the real base, training dominates and takes turns across tasks anyway.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="peftops-bench-prefect-"))
from peftops.pipeline.env import apply_defaults  # noqa: E402

apply_defaults()
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from flows.fleet import fleet  # noqa: E402
from peftops.config import DataConfig, PipelineParams, TrainConfig  # noqa: E402
from test_orchestration import write_manifest  # noqa: E402
from tiny import make_snapshot, write_sst2_like  # noqa: E402

TASKS = ("t1", "t2", "t3", "t4")


def main(concurrency: list[int]) -> None:
    """Print one line per concurrency: cold fleet time and unchanged-rerun time."""
    tmp = Path(tempfile.mkdtemp(prefix="peftops-bench-fleet-"))
    for i, name in enumerate(TASKS):
        write_sst2_like(tmp / "data" / name, n_train=64, n_dev=32, seed=i)
    manifest = write_manifest(tmp / "tasks.yaml", {n: f"{n}/glue/SST-2" for n in TASKS})
    params = PipelineParams(
        data=DataConfig(task=TASKS[0], data_root=str(tmp / "data"), manifest=str(manifest), train_size=0, dev_size=0),
        train=TrainConfig(steps=12, batch_size=8, warmup_steps=1),
        methods={"lora": {"lr": 2e-2, "r": 4, "alpha": 8, "dropout": 0.0}})
    with prefect_test_harness():
        for n in concurrency:
            home = tmp / f"home-{n}"
            make_snapshot(home)
            t0 = time.perf_counter()
            fleet(methods=["lora"], home=str(home), params=params, max_concurrency=n)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            fleet(methods=["lora"], home=str(home), params=params, max_concurrency=n)
            print(f"max_concurrency={n}: {len(TASKS)} tasks trained in {cold:.1f}s; "
                  f"unchanged rerun {time.perf_counter() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1, 2])
