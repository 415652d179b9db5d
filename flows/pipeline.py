"""One task's pipeline, the only one: the demo, ``compare``, every fleet task and ``retrain`` run
this function inside their flows, so they share its stages' cache keys (``flows.stagecalls``):
a fleet run after a comparison of the same task, methods and parameters trains nothing.

pin base -> prepare -> evaluate the base -> per method: train, evaluate, [merge + parity
certificate], [measure latency and forgetting] -> [publish one method through the quality gate],
tracked in MLflow (experiment ``peftops-<task>`` unless told otherwise: a parent run, a child run
per method). What a caller adds on top (a comparison's tables and charts) goes in ``finish``,
which runs inside the parent run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.stagecalls import StageCalls
from peftops.config import PipelineParams, to_dict
from peftops.evaluation.measure import MeasureConfig
from peftops.pipeline.caching import method_settings
from peftops.pipeline.tracking import Tracker
from peftops.reports.tables import build_rows, markdown
from peftops.stages import Layout, git_commit
from tasks import publish_task


@dataclass(frozen=True)
class PipelineOptions:
    """What one task's pipeline runs, and how it is tracked."""

    methods: tuple[str, ...] = ("lora",)
    source: str = "pipeline"  # names the parent run ``<source>-<task>`` and tags the published version
    experiment: str | None = None  # default ``peftops-<task>``
    merge: tuple[str, ...] = ("lora",)  # methods merged into the base and certified
    publish: str | None = "lora"  # the method published through the quality gate (None: nothing)
    measure: MeasureConfig | None = None  # latency and forgetting per model (comparisons)
    threads: int = 0  # torch threads the latencies are taken with (recorded in the measure key)
    refresh: bool = False  # recompute every stage, cache hits or not
    base_pinned: bool = False  # the caller's flow pinned the base (a fleet): verify it without a task run
    progress: bool = False
    parent_params: dict[str, Any] = field(default_factory=dict)  # replaces the parent run's params
    parent_tags: dict[str, str] = field(default_factory=dict)


@dataclass
class PipelineOutputs:
    """Every stage's result of one run of the pipeline, for ``finish`` and the summary."""

    params: PipelineParams
    snapshot: Any
    prepared: Any
    evals: dict[str, Any] = field(default_factory=dict)  # "base" and each method -> EvalResult
    trains: dict[str, Any] = field(default_factory=dict)  # method -> TrainResult
    measures: dict[str, dict[str, Any]] = field(default_factory=dict)  # "base" and each method
    merges: dict[str, Any] = field(default_factory=dict)  # method -> ParityCertificate
    tracker: Tracker | None = None
    parent_run_id: str = ""
    child_run_ids: dict[str, str] = field(default_factory=dict)
    model_ids: dict[str, str] = field(default_factory=dict)  # method -> the child run's logged model
    mirror: dict[str, Any] | None = None  # what the Model Registry mirror changed (tracking.mirror_registry)


class _Timer:
    """Seconds per stage, summed over methods."""

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


def experiment_description(task: str, snap: Any) -> str:
    """What a task's own experiment (``peftops-<task>``) holds, shown on its page in the MLflow UI."""
    return (f"peftops adapters for task `{task}` against the pinned base {snap.name} ({snap.digest}): "
            "one parent run per pipeline run, a child run per method.")


def run_pipeline(params: PipelineParams, home: str | None, opts: PipelineOptions,
                 finish: Callable[[PipelineOutputs], None] | None = None) -> dict[str, Any]:
    """Run one task's pipeline inside the calling flow and return its summary
    (``summary["cached"]`` says which stages were cache hits)."""
    task = params.data.task
    timer = _Timer()
    stages = StageCalls(params, home, refresh=opts.refresh, base_pinned=opts.base_pinned)
    with timer("pin base"):
        snap = stages.base()
    with timer("prepare"):
        prep = stages.prepare()
    out = PipelineOutputs(params=params, snapshot=snap, prepared=prep)
    tracker = out.tracker = Tracker(experiment=opts.experiment or f"peftops-{task}", home=home)
    if opts.experiment is None:
        tracker.describe_experiment(experiment_description(task, snap))
    layout = Layout.of(home)
    flow_run_id = str(flow_run.id or "")
    source_tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": f"peftops {opts.source}"}
    commit = git_commit()
    if commit:
        source_tags["mlflow.source.git.commit"] = commit
    with tracker.run(f"{opts.source}-{task}", params=opts.parent_params or to_dict(params), hold=True,
                     tags={"prefect.flow_run_id": flow_run_id, "base_digest": snap.digest,
                           "data_digest": prep.digest, "task": task, **source_tags, **opts.parent_tags}) as parent:
        out.parent_run_id = parent
        with timer("evaluate"):
            out.evals["base"] = stages.evaluate(None)
        if opts.measure is not None:
            with timer("measure"):
                out.measures["base"] = stages.measure(None, opts.measure, opts.threads)
        for name in opts.methods:
            # The last method's run lingers: what follows it (its % of FFT, the gate, the
            # registry version) joins its one batch instead of costing store calls after its end.
            with tracker.run(name, parent_id=parent, hold=True, linger=name == opts.methods[-1],
                             params={"method": name, **method_settings(params, name), "train": to_dict(params.train)},
                             tags={"task": task, "method": name, "prefect.flow_run_id": flow_run_id,
                                   **source_tags}) as child:
                out.child_run_ids[name] = child
                _one_method(stages, out, name, child, opts, timer, layout)
        rows = build_rows(out.evals, out.trains,
                          base_params=next(iter(out.trains.values())).base_params if out.trains else 0)
        by_name = {r.method: r for r in rows}
        for name, child in out.child_run_ids.items():
            if by_name[name].pct_of_full is not None:
                tracker.log_metrics(child, {"pct_of_full": by_name[name].pct_of_full})
        published = gate = None
        if opts.publish and opts.publish in out.trains:
            with timer("publish"):
                published, gate = _publish(params, home, out, opts, by_name[opts.publish].pct_of_full)
        summary = {
            "task": task, "base_digest": snap.digest, "data_digest": prep.digest,
            "train_examples": prep.train_size, "dev_examples": prep.dev_size,
            "rows": [r.to_dict() for r in rows], "stage_seconds": timer.stages,
            "merge_parity": out.merges["lora"].to_dict() if "lora" in out.merges else None,
            "cached": stages.hits,
            "registry": None if published is None else {
                "task": published.task, "version": published.version, "adapter_id": published.adapter_id,
                "aliases": list(published.aliases)},
            "gate": None if gate is None else gate.to_dict(),
            "mlflow": {"tracking_uri": tracker.tracking_uri, "experiment": tracker.experiment,
                       "parent_run_id": parent, "ui": tracker.ui_command()},
        }
        if out.mirror is not None:
            summary["mlflow"]["model_registry"] = out.mirror
        table_md = markdown(rows)
        tracker.log_text(parent, table_md, "comparison.md")
        tracker.log_table(parent, summary["rows"], "results_table.json")
        tracker.log_json(parent, summary, f"{opts.source}-summary.json")
        tracker.log_metrics(parent, {f"stage_seconds.{k.replace(' ', '_')}": v for k, v in timer.stages.items()})
        if finish is not None:  # last, so that what it logs wins over the generic table
            finish(out)
    _report_to_prefect(summary, table_md, opts)
    return summary


def _report_to_prefect(summary: dict[str, Any], table_md: str, opts: PipelineOptions) -> None:
    """What a reader of the flow run needs: which stages were cache hits, the result table (also a
    Markdown artifact, with the MLflow run and the registry version it produced)."""
    log = get_run_logger()
    task = summary["task"]
    hits = [k for k, hit in summary["cached"].items() if hit]
    ran = [k for k, hit in summary["cached"].items() if not hit]
    log.info("%s: cache hits: %s; ran: %s", task, ", ".join(hits) or "none", ", ".join(ran) or "none")
    log.info("%s results:\n%s", task, table_md)
    mlflow = summary["mlflow"]
    lines = [f"# {opts.source}: {task}", "", table_md, "",
             f"- MLflow: experiment `{mlflow['experiment']}`, parent run `{mlflow['parent_run_id']}` "
             f"(`{mlflow['ui']}`)"]
    reg, gate = summary.get("registry"), summary.get("gate")
    if reg:
        promoted = "promoted to production" if gate and gate.get("promote") else "not promoted"
        lines.append(f"- Registry: `{reg['task']}` v{reg['version']} ({promoted}; "
                     f"`peftops registry show {reg['task']} --version {reg['version']}`)")
        log.info("%s: published %s v%s (%s)", task, reg["task"], reg["version"], promoted)
    key = "".join(c if c.isalnum() else "-" for c in f"{opts.source}-{task}".lower())
    create_markdown_artifact("\n".join(lines) + "\n", key=key, description=f"{opts.source} results for {task}")


def _one_method(stages: StageCalls, out: PipelineOutputs, name: str, child: str, opts: PipelineOptions,
                timer: _Timer, layout: Layout) -> None:
    """Train, evaluate, and (as asked) merge and measure one method, logging to its child run."""
    tracker = out.tracker
    with timer("train"), tracker.system_metrics(child), tracker.step_logger(child) as live:
        tr = out.trains[name] = stages.train(name, opts.progress, on_step=live)
    cached = stages.hits[f"train.{name}"]
    tracker.set_tags(child, {"peftops.train_cached": str(cached).lower()})
    if not live.steps:  # a cache hit: the steps of the run that trained it
        tracker.log_history(child, tr.history)
    prep = out.prepared
    for split, path, size, context in (("train", prep.train_path, prep.train_size, "training"),
                                       ("dev", prep.dev_path, prep.dev_size, "evaluation")):
        tracker.log_dataset(child, f"{out.params.data.task}-{split}", prep.digest, str(path), context,
                            {"examples": size, "split": split})
    if not cached and name != "full":  # a trained adapter is a model of its run (FFT's 1 GB copy is not logged)
        out.model_ids[name] = tracker.log_model(child, f"{out.params.data.task}-{name}", tr.adapter_dir,
                                                params={"method": name, **method_settings(out.params, name)},
                                                tags={"task": out.params.data.task,
                                                      "base_digest": out.snapshot.digest})
    with timer("evaluate"):
        ev = out.evals[name] = stages.evaluate(name)
    tracker.log_metrics(child, {f"dev_{k}": v for k, v in ev.metrics.items()} | {
        "trainable_params": tr.trainable_params, "trainable_pct": tr.trainable_pct,
        "peak_memory_mb": tr.peak_memory_mb, "train_time_s": tr.train_time_s,
        "examples_per_s": tr.examples_per_s, "adapter_bytes": tr.adapter_bytes})
    run_dir = layout.run(out.params.data.task, name)
    tracker.log_artifact(child, run_dir / "train.json")
    samples = run_dir / "samples.json"  # a generation task's dev generations, beside eval.json
    if samples.exists():
        table = json.loads(samples.read_text())
        tracker.log_table(child, [dict(zip(table["columns"], row)) for row in table["rows"]], "samples.json")
    if name in opts.merge:
        with timer("merge"):
            cert = out.merges[name] = stages.merge(name)
        tracker.log_metrics(child, {"merge_max_abs_dlogit": cert.max_abs_dlogit, "merge_mean_kl": cert.mean_kl})
        tracker.log_json(child, cert.to_dict(), "merge-parity.json")
    if opts.measure is not None:
        with timer("measure"):
            out.measures[name] = stages.measure(name, opts.measure, opts.threads)


def _publish(params: PipelineParams, home: str | None, out: PipelineOutputs, opts: PipelineOptions,
             pct_of_full: float | None):
    """Publish ``opts.publish`` through the quality gate; both runs name the version they produced."""
    name = opts.publish
    ev = out.evals[name]
    metrics = {f"dev_{k}": v for k, v in ev.metrics.items()}
    if pct_of_full is not None:
        metrics["pct_of_full"] = pct_of_full
    full = out.evals.get(params.gate.baseline)
    child = out.child_run_ids[name]
    lineage = {"mlflow_run_id": child, "prefect_flow_run_id": str(flow_run.id or "")}
    if name in out.model_ids:
        lineage["mlflow_model_id"] = out.model_ids[name]
    published, gate = publish_task(params, home, name, score=ev.score, full_score=full.score if full else None,
                                   metric=ev.metric, metrics=metrics, lineage=lineage,
                                   tags={"source": opts.source}, tracker=out.tracker, run_id=child)
    for run_id in (out.parent_run_id, child):
        out.tracker.set_tags(run_id, {"registry.task": published.task, "registry.version": str(published.version),
                                      "registry.adapter_id": published.adapter_id})
    if params.tracking.mirror_registry:  # after the gate moved (or not) the alias
        out.mirror = _mirror(out.tracker, home, published.task)
    return published, gate


def _mirror(tracker: Tracker, home: str | None, task: str) -> dict[str, Any] | None:
    """Make MLflow's Model Registry match ours for ``task``. Our registry is the source of truth
    and the version is already published there: a failure here is a warning (``peftops
    mlflow-mirror`` resyncs later), never a failed publish."""
    from registry import Registry

    from peftops.pipeline.mirror import mirror_task
    from peftops.stages import registry_locations

    try:
        with Registry.open(**registry_locations(home)) as reg:
            report = mirror_task(tracker, reg, task)
    except Exception as err:
        get_run_logger().warning("%s: not mirrored into MLflow's Model Registry (the registry has the "
                                 "version; `peftops mlflow-mirror --task %s` retries): %s", task, task, err)
        return None
    get_run_logger().info("%s: MLflow model %s in step with the registry (new versions: %s)", task,
                          report.model_name, ", ".join(f"v{n}" for n in report.created) or "none")
    return report.to_dict()
