# peftops fleet [--task T ...] [--method M ...] [--max-concurrency N]   (or: python -m flows.fleet)
"""Fleet orchestration: one task's pipeline, many tasks with bounded concurrency, and the
incremental retrain of only what changed.

* ``adapter_pipeline`` -- one task, one or more methods; every stage but publish is cached by
  its input key (``peftops.pipeline.caching``), so an unchanged task costs seconds.
* ``fleet`` -- many tasks of the manifest, each an ``adapter_pipeline`` run: with the ``local``
  runner a subflow in a bounded thread pool, with the ``ray`` runner a flow run in its own Ray
  worker process (``flows.ray_fleet``). One task's failure does not stop the others; the report
  (``<home>/fleet-report.json``) lists every task, and the flow ends Failed naming the failed
  tasks once all have finished (so schedules, CI and the exit code see it).
* ``retrain`` -- the tasks affected by the changes since a git revision (``peftops.pipeline.changes``),
  run as a fleet.

Concurrency (``local`` runner): the tasks run in threads of this process, and the stages that load a model
(train, evaluate, merge) take turns (``tasks.stages``: model construction is not thread-safe,
and on CPU one training already uses every core). ``max_concurrency`` > 1 overlaps one task's
training with the others' data preparation, publishing and tracking (4 tiny tasks: 55-61 s at 1,
17-25 s at 2; ``python -m bench.fleet_bench``); it defaults to 2. Parallel training is
scale-out: the ``ray`` runner (``fleet.runner`` / ``--runner ray``) runs one task per Ray worker
process, as many at a time as the cluster has room for (``fleet.num_cpus`` etc. per task), with no
fleet-wide lock; the ``fleet-task`` deployment in ``prefect.yaml`` runs one task per worker process or pod.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.pipeline import PipelineOptions, experiment_description, run_pipeline
from flows.stagecalls import RESULTS_DIR
from peftops.config import PipelineParams, for_task, load_params, state_home
from peftops.config import FleetConfig, fleet_config
from peftops.fsutil import write_json_atomic
from peftops.pipeline.tracking import Tracker
from peftops.stages import Layout
from peftops.training.memory import freeze_heap, heap_frozen
from tasks import base_task

DEFAULT_METHODS = ("lora",)
REPORT = "fleet-report.json"


class FleetFailed(RuntimeError):
    """Some tasks of a fleet failed; the others completed. ``report`` has every task's outcome."""

    def __init__(self, report: dict[str, Any]):
        self.report = report
        failed = report["failed"]
        detail = "; ".join(f"{t}: {report['tasks'][t]['error']}" for t in failed)
        super().__init__(f"{len(failed)} of {len(report['tasks'])} tasks failed ({detail})")


@flow(name="adapter-pipeline", flow_run_name="pipeline-{task}")
def adapter_pipeline(task: str | None = None, methods: list[str] | tuple[str, ...] = DEFAULT_METHODS,
                     params_file: str | None = None, home: str | None = None, progress: bool = False,
                     cache: bool = True, params: PipelineParams | None = None,
                     run_tags: dict[str, str] | None = None, base_pinned: bool = False) -> dict[str, Any]:
    """One task (default: ``params.data.task``), one or more methods: prepare, train, evaluate,
    merge (LoRA), publish, tracked in MLflow (``run_tags`` on the parent run); unchanged stages are
    cache hits. ``base_pinned``: the calling fleet has pinned the base (StageCalls.base)."""
    p = for_task(params or load_params(params_file), task)
    with untagged_task_runs():
        return run_pipeline(p, home, PipelineOptions(methods=tuple(methods), source="pipeline", progress=progress,
                                                     refresh=not cache, parent_tags=dict(run_tags or {}),
                                                     base_pinned=base_pinned))


def pipeline_flow(home: str | None):
    """``adapter_pipeline`` with its result storage named: the stage results' folder under the
    state home. Without one, every flow run asks the Prefect API server for a default storage
    block (three requests a fleet task, whose answer is always "none")."""
    return _pipeline_flow(Layout.of(home).home / RESULTS_DIR)


@functools.lru_cache(maxsize=16)
def _pipeline_flow(results: Any):  # one Flow per folder, not per task: with_options copies the flow
    return adapter_pipeline.with_options(result_storage=results)


@contextlib.contextmanager
def untagged_task_runs():
    """The stage task runs of a pipeline carry no tags: the flow run keeps its tags (``fleet``,
    ``fleet-run:<id>``, ``task:<name>``), while a tagged task run costs a tag-concurrency slot
    lease from the Prefect server before it starts and a release after (two round trips per
    stage, about an eighth of a one-step task's time on a Ray worker, profiled with py-spy)."""
    from prefect.context import TagsContext

    with TagsContext(current_tags=set()):
        yield


@contextlib.contextmanager
def task_flow_settings():
    """Settings for a fleet task's flow run: no flow-run heartbeats. Prefect's heartbeat thread
    sleeps in one-second steps and the run's exit waits for it, up to a second per task run; a fleet detects its own dead tasks instead (the Ray runner
    marks a dead attempt's flow run Crashed, ``flows.ray_fleet``), and the fleet's own flow run
    keeps its heartbeats."""
    from prefect.context import SettingsContext, get_settings_context
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    global _NO_HEARTBEAT
    context = get_settings_context()
    # Built once per outer settings object, not per task: rebuilding Prefect's settings validates
    # every field and reads the environment again.
    if _NO_HEARTBEAT[0] is not context.settings:
        _NO_HEARTBEAT = (context.settings, context.settings.copy_with_update(
            updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}))
    with SettingsContext(profile=context.profile, settings=_NO_HEARTBEAT[1]):
        yield


_NO_HEARTBEAT: tuple[Any, Any] = (None, None)  # (the outer settings, them without heartbeats)


def outcome(state, seconds: float) -> dict[str, Any]:
    """One task's line of the report, from its subflow's final state."""
    if state.is_completed():
        s = state.result()
        return {"status": "completed", "seconds": round(seconds, 2), "cached": s["cached"],
                "trained": sorted(k.split(".", 1)[1] for k, hit in s["cached"].items()
                                  if k.startswith("train.") and not hit),
                "registry": s["registry"], "rows": s["rows"], "stage_seconds": s["stage_seconds"],
                "mlflow_parent_run_id": s["mlflow"]["parent_run_id"]}
    try:
        state.result()
        error = state.message or state.name
    except BaseException as err:  # the task's own error, one line
        error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return {"status": "failed", "seconds": round(seconds, 2), "error": error, "state": state.name}


@flow(name="fleet")
def fleet(tasks: list[str] | None = None, methods: list[str] | tuple[str, ...] = DEFAULT_METHODS,
          params_file: str | None = None, home: str | None = None, max_concurrency: int = 2,
          progress: bool = False, params: PipelineParams | None = None,
          note: dict[str, Any] | None = None, runner: str | None = None, address: str | None = None,
          fleet_cfg: FleetConfig | dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``adapter_pipeline`` for each task (default: every task in the manifest); report every
    outcome and fail at the end if any task failed. The ``local`` runner runs at most
    ``max_concurrency`` tasks at a time in threads; the ``ray`` runner one task per Ray worker
    process (``fleet_cfg``: resources and retries; ``runner`` / ``address`` override it and
    ``params.fleet``). ``note`` is copied into the report (the retrain flow puts its reasons there)."""
    from peftops.data.manifest import load_manifest

    params = params or load_params(params_file)
    cfg = fleet_config(fleet_cfg if fleet_cfg is not None else getattr(params, "fleet", None),
                       runner=runner, address=address)
    names = list(tasks) if tasks else sorted(load_manifest(params.data.manifest))
    snap = base_task(params, home)  # pin once, before the tasks share it
    for name in names:  # create the MLflow store and experiments here, not racing in the threads
        Tracker(experiment=f"peftops-{name}", home=home, description=experiment_description(name, snap))
    t0 = time.perf_counter()
    if cfg.runner == "ray":
        from flows.ray_fleet import run_on_ray

        outcomes = run_on_ray(names, tuple(methods), home, params, cfg, str(flow_run.id or ""), progress)
        return _report(home, outcomes, methods, max_concurrency, time.perf_counter() - t0, note, cfg)

    if not heap_frozen():  # once per process: the tasks' collections skip what the imports left alive
        freeze_heap()

    def one(name: str):
        t = time.perf_counter()
        with task_flow_settings():
            state = pipeline_flow(home)(task=name, methods=tuple(methods), home=home, progress=progress,
                                     params=params, base_pinned=True, return_state=True)
        return name, state, time.perf_counter() - t

    with ThreadPoolExecutor(max_workers=max(1, max_concurrency), thread_name_prefix="fleet") as pool:
        # each subflow runs in a copy of this flow's context, so it is recorded as its child
        futures = [pool.submit(contextvars.copy_context().run, one, name) for name in names]
        results = [f.result() for f in futures]
    outcomes = {name: outcome(state, secs) for name, state, secs in results}
    return _report(home, outcomes, methods, max_concurrency, time.perf_counter() - t0, note, cfg)


def _report(home, outcomes: dict[str, Any], methods, max_concurrency: int, seconds: float,
            note: dict[str, Any] | None, cfg: FleetConfig | None = None) -> dict[str, Any]:
    """Write ``<home>/fleet-report.json``; raise ``FleetFailed`` when a task failed."""
    cfg = cfg or FleetConfig()
    report = {
        **(note or {}), "flow_run_id": str(flow_run.id or ""), "methods": list(methods),
        "runner": cfg.runner, "fleet": cfg.model_dump(),
        "max_concurrency": max_concurrency, "seconds": round(seconds, 2), "tasks": outcomes,
        "trained": {t: o["trained"] for t, o in outcomes.items() if o["status"] == "completed" and o["trained"]},
        "failed": [t for t, o in outcomes.items() if o["status"] != "completed"],
        "retried": {t: o["retried"] for t, o in outcomes.items() if o.get("retried")},
    }
    write_json_atomic(state_home(home) / REPORT, report)
    if report["failed"]:
        raise FleetFailed(report)
    return report


@flow(name="retrain")
def retrain(since: str, repo: str = ".", methods: list[str] | tuple[str, ...] = DEFAULT_METHODS,
            params_file: str | None = None, home: str | None = None, max_concurrency: int = 2,
            data_dir: str | None = None, dry_run: bool = False, runner: str | None = None,
            address: str | None = None) -> dict[str, Any]:
    """Retrain exactly the tasks whose data, manifest entry, parameters or code changed since the
    git revision ``since`` (committed and uncommitted changes), as one fleet. ``data_dir``
    overrides the data root both for finding changes and for training. The report
    (``<home>/fleet-report.json``) carries ``since`` and each affected task's reasons."""
    from peftops.pipeline.changes import affected_since

    params = load_params(params_file)
    if data_dir:
        params = params.model_copy(update={"data": params.data.model_copy(update={"data_root": data_dir})})
    affected = affected_since(since, repo, params_file=params_file, manifest=params.data.manifest,
                              data_dir=params.data.data_root)
    note = {"since": since, "affected": affected, "dry_run": dry_run}
    log = get_run_logger()
    if not affected:
        log.info("nothing to retrain: no task is affected by the changes since %s", since)
    for name, why in sorted(affected.items()):
        log.info("%s is affected: %s", name, "; ".join(why))
    if not affected or dry_run:
        return _report(home, {}, methods, max_concurrency, 0.0, note)
    return fleet(tasks=sorted(affected), methods=methods, home=home, max_concurrency=max_concurrency,
                 params=params, note=note, runner=runner, address=address)


if __name__ == "__main__":
    import json

    from peftops.pipeline.env import apply_defaults

    apply_defaults()
    print(json.dumps(fleet(), indent=2, default=str))
