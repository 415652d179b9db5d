# peftops demo        (or: python -m flows.demo)
"""The main job as a Prefect flow: pin base -> prepare -> train LoRA and FFT -> evaluate
-> merge with parity check -> publish -> one comparison table, all tracked in MLflow."""

from __future__ import annotations

import json
import time
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from peftops.config import PipelineParams, load_params, state_home, to_dict
from peftops.fsutil import write_json_atomic
from peftops.stages import Layout
from peftops.reports.tables import build_rows, markdown
from peftops.pipeline.tracking import Tracker
from flows.stagecalls import StageCalls
from tasks import publish_task


class _Timer:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.stages[name] = timer.stages.get(name, 0.0) + time.perf_counter() - self.t0

        return _Ctx()


@flow(name="peftops-demo")
def demo_flow(params_file: str | None = None, home: str | None = None, progress: bool = True,
              methods: tuple[str, ...] = ("lora", "full"), params: PipelineParams | None = None) -> dict[str, Any]:
    """Run the whole pipeline on one task and return the summary (also written as JSON)."""
    summary = run_and_track(params or load_params(params_file), home, methods, progress, source="demo")
    out = state_home(home) / "demo-summary.json"
    write_json_atomic(out, summary)
    summary["summary_path"] = str(out)
    return summary


def run_and_track(params: PipelineParams, home: str | None, methods, progress: bool = True, *,
                  source: str = "demo", cache: bool = False) -> dict[str, Any]:
    """One task's pipeline inside the calling flow, tracked in MLflow (experiment ``peftops-<task>``:
    a parent run, a child run per method) and published; shared by the demo and the fleet.

    ``cache=True`` makes every stage but publish a cache hit when its inputs are unchanged
    (``flows.stagecalls``); ``summary["cached"]`` says which stages hit.
    """
    task = params.data.task
    timer = _Timer()
    stages = StageCalls(params, home, cache=cache)
    with timer("pin base"):
        snap = stages.base()
    with timer("prepare"):
        prep = stages.prepare()
    tracker = Tracker(experiment=f"peftops-{task}", home=home)
    layout = Layout.of(home)
    evals, trains, child_ids = {}, {}, {}
    cert = None
    with tracker.run(f"{source}-{task}", params=to_dict(params),
                     tags={"prefect.flow_run_id": str(flow_run.id or ""), "base_digest": snap.digest,
                           "data_digest": prep.digest, "task": task}) as parent:
        with timer("evaluate"):
            evals["base"] = stages.evaluate(None)
        for name in methods:
            with tracker.run(name, parent_id=parent, params={"method": name, **params.methods.get(name, {}),
                                                              "train": to_dict(params.train)},
                             tags={"task": task, "method": name, "prefect.flow_run_id": str(flow_run.id or "")}
                             ) as child:
                child_ids[name] = child
                with timer("train"):
                    tr = stages.train(name, progress)
                trains[name] = tr
                tracker.set_tags(child, {"peftops.train_cached": str(stages.hits[f"train.{name}"]).lower()})
                tracker.log_history(child, tr.history)
                with timer("evaluate"):
                    ev = stages.evaluate(name)
                evals[name] = ev
                tracker.log_metrics(child, {
                    f"dev_{k}": v for k, v in ev.metrics.items()} | {
                    "trainable_params": tr.trainable_params, "trainable_pct": tr.trainable_pct,
                    "peak_memory_mb": tr.peak_memory_mb, "train_time_s": tr.train_time_s,
                    "examples_per_s": tr.examples_per_s, "adapter_bytes": tr.adapter_bytes})
                tracker.log_artifact(child, layout.run(task, name) / "train.json")
                if name == "lora":
                    with timer("merge"):
                        cert = stages.merge("lora")
                    tracker.log_metrics(child, {"merge_max_abs_dlogit": cert.max_abs_dlogit,
                                                "merge_mean_kl": cert.mean_kl})
                    tracker.log_json(child, cert.to_dict(), "merge-parity.json")
        rows = build_rows(evals, trains, base_params=next(iter(trains.values())).base_params if trains else 0)
        by_name = {r.method: r for r in rows}
        for name, child in child_ids.items():
            if by_name[name].pct_of_full is not None:
                tracker.log_metrics(child, {"pct_of_full": by_name[name].pct_of_full})
        published = None
        if "lora" in trains:
            lora_row = by_name["lora"]
            metrics = {f"dev_{k}": v for k, v in evals["lora"].metrics.items()}
            if lora_row.pct_of_full is not None:
                metrics["pct_of_full"] = lora_row.pct_of_full
            with timer("publish"):  # production only if the quality gate passes against the FFT score
                published, gate = publish_task(params, home, "lora", score=evals["lora"].score,
                                               full_score=evals["full"].score if "full" in evals else None,
                                               metric=evals["lora"].metric, metrics=metrics,
                                               lineage={"mlflow_run_id": child_ids["lora"],
                                                        "prefect_flow_run_id": str(flow_run.id or "")},
                                               tags={"source": source}, tracker=tracker, run_id=child_ids["lora"])
            for run_id in (parent, child_ids["lora"]):  # both runs name the registry version they produced
                tracker.set_tags(run_id, {"registry.task": published.task, "registry.version": str(published.version),
                                          "registry.adapter_id": published.adapter_id})
        table_md = markdown(rows)
        summary = {
            "task": task, "base_digest": snap.digest, "data_digest": prep.digest,
            "train_examples": prep.train_size, "dev_examples": prep.dev_size,
            "rows": [r.to_dict() for r in rows], "stage_seconds": timer.stages,
            "merge_parity": cert.to_dict() if cert else None, "cached": stages.hits,
            "registry": None if published is None else {
                "task": published.task, "version": published.version, "adapter_id": published.adapter_id,
                "aliases": list(published.aliases)},
            "gate": None if published is None else gate.to_dict(),
            "mlflow": {"tracking_uri": tracker.tracking_uri, "experiment": tracker.experiment,
                       "parent_run_id": parent, "ui": tracker.ui_command()},
        }
        tracker.log_text(parent, table_md, "comparison.md")
        tracker.log_json(parent, summary, f"{source}-summary.json")
        tracker.log_metrics(parent, {f"stage_seconds.{k.replace(' ', '_')}": v for k, v in timer.stages.items()})
    return summary


if __name__ == "__main__":
    print(json.dumps(demo_flow(), indent=2, default=str))
