# peftops compare --task sst2 --methods lora,full     (or: run_compare(params, CompareConfig(...)))
"""A comparison as a Prefect flow: the shared per-task pipeline (``flows.pipeline``) with every
method of the comparison, no merge and no publish, the measure stage on; then the table, its
files and charts, logged to the comparison's MLflow parent run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from prefect import flow

from flows.pipeline import PipelineOptions, PipelineOutputs, run_pipeline
from peftops.config import PipelineParams, for_task, to_dict
from peftops.reports.compare import CompareConfig, compare_row, fill_pct, row_metrics
from peftops.reports.comparison_files import write_outputs
from peftops.reports.tables import CompareRow


@dataclass
class CompareResult:
    """A finished comparison: its rows and where everything was written."""

    task: str
    rows: list[CompareRow]
    files: dict[str, Path]
    parent_run_id: str
    tracking_uri: str
    seconds: float
    cached: dict[str, bool]

    def row(self, method: str) -> CompareRow:
        return next(r for r in self.rows if r.method == method)


@flow(name="compare", flow_run_name="compare-{cfg.task}")
def run_compare(params: PipelineParams, cfg: CompareConfig, home: str | Path | None = None,
                progress: bool = True) -> CompareResult:
    """Train, evaluate and measure every method of ``cfg`` on ``cfg.task``; write and log the table."""
    t_start = time.perf_counter()
    if cfg.threads:
        # On a shared CPU one thread per process can be several times faster than spinning OpenMP workers.
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    params = for_task(params, cfg.task)
    opts = PipelineOptions(
        methods=tuple(cfg.methods), source="compare", experiment=cfg.experiment, merge=(), publish=None,
        measure=cfg.measure, threads=threads, refresh=not cfg.reuse, progress=progress,
        parent_params={"task": cfg.task, "methods": ",".join(cfg.methods), "train": to_dict(params.train),
                       "forgetting": to_dict(cfg.forgetting), "command": cfg.command},
        parent_tags={"kind": "compare"})
    made: dict[str, Any] = {}

    def finish(out: PipelineOutputs) -> None:
        made["rows"], made["files"] = _tables(params, cfg, out, threads)

    summary = run_pipeline(params, str(home) if home else None, opts, finish)
    return CompareResult(task=cfg.task, rows=made["rows"], files=made["files"],
                         parent_run_id=summary["mlflow"]["parent_run_id"],
                         tracking_uri=summary["mlflow"]["tracking_uri"], seconds=time.perf_counter() - t_start,
                         cached=summary["cached"])


def _tables(params: PipelineParams, cfg: CompareConfig, out: PipelineOutputs,
            threads: int) -> tuple[list[CompareRow], dict[str, Path]]:
    """The comparison's rows from the stage records; its files, logged to the parent run."""
    prep, snap, tracker = out.prepared, out.snapshot, out.tracker
    nll_before = out.measures["base"]["general_nll"]
    rows = [compare_row(cfg.task, "base", out.evals["base"].to_dict(), out.measures["base"], None, nll_before,
                        prep.dev_size)] if cfg.include_base else []
    for name in cfg.methods:
        rows.append(compare_row(cfg.task, name, out.evals[name].to_dict(), out.measures[name],
                                out.trains[name].to_dict(), nll_before, prep.dev_size))
    fill_pct(rows, cfg.baseline)
    for row in rows:
        if row.method in out.child_run_ids:
            tracker.log_metrics(out.child_run_ids[row.method], row_metrics(row))
            tracker.log_json(out.child_run_ids[row.method], row.to_dict(), "comparison-row.json")
    general = out.measures["base"]["general_set"]
    budget = {"train": to_dict(params.train), "train_examples": prep.train_size, "dev_examples": prep.dev_size,
              "data_seed": params.data.seed}
    files = write_outputs(rows, Path(cfg.out_dir) / cfg.task, params.gate.min_pct_of_full, meta={
        "task": cfg.task, "metric": out.evals["base"].metric, "methods": list(cfg.methods),
        "baseline": cfg.baseline, "budget": budget, "base": snap.name, "base_digest": snap.digest,
        "data_digest": prep.digest, "general_set": general,
        "latency": {"batch_sizes": list(cfg.latency_batch_sizes), "timed_batches": cfg.latency_batches,
                    "statistic": "median ms per example", "device": out.measures["base"]["device"],
                    "torch_threads": threads},
        "memory_kind": next((r.memory_kind for r in rows if r.memory_kind), None),
        "command": cfg.command, "mlflow_parent_run_id": out.parent_run_id,
    })
    for path in files.values():
        tracker.log_artifact(out.parent_run_id, path, "charts" if path.suffix == ".png" else None)
    base_row = next((r for r in rows if r.method == "base"), None)
    if base_row is not None:
        tracker.log_metrics(out.parent_run_id, {"base_score": base_row.score, "general_nll_base": nll_before})
    return rows, files
