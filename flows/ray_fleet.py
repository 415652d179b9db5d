"""The fleet on a Ray cluster: one task's pipeline per Ray task, in its own worker process.

Each fleet task is a Ray task that runs ``adapter_pipeline`` (a Prefect flow run on the shared
Prefect server, tagged ``fleet-run:<id>``) in a worker process with the task's resource requests
(``peftops.config.FleetConfig``); torch uses the task's CPUs as threads. Only names, paths and
parameters travel to a worker, and only the task's report line comes back: models, splits and
adapters move through the shared state directory, registry, MLflow and S3.

Faults: Ray re-runs a task whose worker process died (``max_retries``; a task's own error is not
retried, it is reported). Each attempt appends a line to
``<home>/fleet-runs/<fleet run>/<task>.jsonl`` when it starts and when it finishes, so the
driver can say which tasks were retried and why; a re-run marks the dead attempt's Prefect flow run
Crashed and its MLflow runs KILLED, and its training resumes from the last checkpoint written
under the state directory. Publishing is content-addressed, so a re-run publishes the same
version instead of a second one.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from peftops.config import PipelineParams, state_home
from peftops.config import FleetConfig
from peftops.pipeline.env import DEFAULTS as ENV_DEFAULTS

ATTEMPTS_DIR = "fleet-runs"
RUN_TAG = "peftops.fleet_run_id"
LOOPBACK_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

# What a worker must share with the driver to write to the same places (Ray's runtime_env).
SHARED_ENV = (
    "PEFTOPS_HOME", "PEFTOPS_DATA_ROOT", "PEFTOPS_DEVICE", "PEFTOPS_REGISTRY_DB", "PEFTOPS_REGISTRY_BLOBS",
    "PEFTOPS_S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "PREFECT_API_URL",
    "PREFECT_HOME", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
    "PEFTOPS_WORKER_SETUP", "PEFTOPS_WARM_BASE", LOOPBACK_VAR, *ENV_DEFAULTS,
)


def worker_env() -> dict[str, str]:
    """The driver's values of ``SHARED_ENV`` (the process defaults where the driver has none: a
    worker's torch reads some of them at import, before any task code runs), and a PYTHONPATH
    that finds this project first."""
    env = {k: v for k in SHARED_ENV if (v := os.environ.get(k) or ENV_DEFAULTS.get(k))}
    env.setdefault("PEFTOPS_WARM_BASE", "1")  # a worker runs task after task: keep the base loaded
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                   if p and p != root])
    return env


# A private cluster's own processes share the machine's cores with its workers, whose trainings
# want every cycle of theirs: its log monitor need not glob the logs directory ten times a second
# (the driver does not read the workers' logs: ``log_to_driver`` is off; then twice a second), and
# nothing reads its metrics (no dashboard). Together ~1 % of a core less for Ray's own processes
# on an idle 2-CPU private cluster (``bench/fleet_bench.py``'s notes in BENCHMARKS.md, "Fleet").
PRIVATE_CLUSTER_ENV = {"RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0", "RAY_enable_metrics_collection": "0"}


def attempts_file(home: str | Path | None, fleet_run_id: str, task: str) -> Path:
    return state_home(home) / ATTEMPTS_DIR / (fleet_run_id or "no-flow-run") / f"{task}.jsonl"


def _append(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:  # one short line per write: appends of this size are atomic
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_attempts(path: Path) -> list[dict[str, Any]]:
    """One entry per attempt: its start record, plus ``finished`` when it reported back."""
    if not path.exists():
        return []
    attempts: list[dict[str, Any]] = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec["event"] == "start":
            attempts.append({**rec, "finished": False})
        elif attempts and rec["event"] == "finish":
            attempts[-1]["finished"] = True
    return attempts


def retry_reasons(attempts: list[dict[str, Any]]) -> list[str]:
    """Why each attempt but the last did not finish (only a dead worker makes Ray re-run a task)."""
    return [f"attempt {a['attempt']}: worker process {a['pid']} on {a['host']} died before the task finished"
            for a in attempts[:-1] if not a["finished"]]


def _close_dead_attempts(task: str, fleet_run_id: str, home: str | None, reason: str) -> None:
    """Mark the Prefect flow runs and MLflow runs a dead worker left Running."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
                                                FlowRunFilterTags)
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    from peftops.pipeline.tracking import Tracker

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[f"fleet-run:{fleet_run_id}", f"task:{task}"]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING]))))
        for run in runs:
            client.set_flow_run_state(run.id, Crashed(message=reason), force=True)
    tracker = Tracker(experiment=f"peftops-{task}", home=home)
    client = tracker.client
    for run in client.search_runs([tracker.experiment_id], filter_string=(
            f"tags.`{RUN_TAG}` = '{fleet_run_id}' and attributes.status = 'RUNNING'")):
        children = client.search_runs([tracker.experiment_id], filter_string=(
            f"tags.`mlflow.parentRunId` = '{run.info.run_id}' and attributes.status = 'RUNNING'"))
        for r in [*children, run]:
            client.set_tag(r.info.run_id, "peftops.killed_reason", reason)
            client.set_terminated(r.info.run_id, status="KILLED")


class Retry503:
    """An HTTP transport that asks again soon when the server answers 503 (Service Unavailable).

    A Prefect server on SQLite answers 503 when a request's transaction collides with another
    write (``SQLITE_BUSY``: in a fleet, mostly a new flow run against the stream of task-run
    events the server records), and Prefect's client then waits 2 s before asking again (4 s,
    8 s, ... after that) however short the collision was: this transport asks again after
    ``delays`` (0.75 s in all) and only then hands the 503 to Prefect's own back-off. Only
    requests whose body can be sent twice are retried (every API call's JSON body can).
    ``retries`` counts the 503s it answered by asking again."""

    delays = (0.05, 0.1, 0.2, 0.4)

    def __init__(self, inner: Any):
        self.inner = inner
        self.retries = 0

    def handle_request(self, request):
        import httpx

        for delay in self.delays if isinstance(request.stream, httpx.ByteStream) else ():
            response = self.inner.handle_request(request)
            if response.status_code != 503:
                return response
            response.read()
            response.close()
            self.retries += 1
            time.sleep(delay)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> "Retry503":
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.inner.__exit__(*exc)


_CLIENTS: dict[str, Any] = {}  # this process's Prefect client per API URL (a worker's: for all its tasks)


def worker_client() -> Any:
    """This process's Prefect client for the current API URL, opened once and kept open: each
    flow run would otherwise open its own (a TLS context built from the CA bundle, a CSRF token
    request and a new connection each: 37 against 17 ms of CPU for a flow run of no task runs,
    ``python -m bench.fleet_bench --probe prefect``), and its transport is :class:`Retry503`."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = str(PREFECT_API_URL.value() or "")
    client = _CLIENTS.get(url)
    if client is None or client._closed:
        client = get_client(sync_client=True)
        client._client._transport = Retry503(client._client._transport)  # httpx.Client's own transport
        client.__enter__()  # never exited: it lives as long as the process
        _CLIENTS[url] = client
    return client


@contextlib.contextmanager
def worker_client_context() -> Iterator[Any]:
    """Run the flow runs of this block with :func:`worker_client` (Prefect's engine takes the
    client of the current ``SyncClientContext`` instead of opening one); yields its
    :class:`Retry503` transport, whose ``retries`` count the 503s asked again."""
    from prefect.context import SyncClientContext

    client = worker_client()
    with SyncClientContext.model_construct(client=client):
        yield client._client._transport


def run_task(name: str, methods: tuple[str, ...], home: str, params: PipelineParams, fleet_run_id: str,
             threads: int, progress: bool = False) -> dict[str, Any]:
    """One fleet task inside a Ray worker: its pipeline as a Prefect flow run; returns its report line."""
    import ray
    import torch
    from prefect import tags

    from flows.fleet import outcome, pipeline_flow, task_flow_settings
    from peftops.pipeline.env import apply_defaults
    from peftops.training.memory import freeze_heap, heap_frozen

    apply_defaults()
    torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS=1 in workers; use the task's CPUs
    first = not heap_frozen()  # this worker process's first task
    if first:
        freeze_heap()  # a warm worker's imports are not garbage: keep the per-training collection short
    path = attempts_file(home, fleet_run_id, name)
    previous = read_attempts(path)
    attempt = len(previous) + 1
    _append(path, {"event": "start", "attempt": attempt, "pid": os.getpid(), "host": socket.gethostname(),
                   "node": ray.get_runtime_context().get_node_id(), "time": time.time()})
    if previous and not previous[-1]["finished"]:
        _close_dead_attempts(name, fleet_run_id, home, retry_reasons(previous + [{}])[-1])
    t0 = time.perf_counter()
    with tags("fleet", f"fleet-run:{fleet_run_id}", f"task:{name}"), task_flow_settings(), \
            worker_client_context() as transport:
        retried = transport.retries
        state = pipeline_flow(home)(task=name, methods=methods, home=home, progress=progress, params=params,
                                 run_tags={RUN_TAG: fleet_run_id}, base_pinned=True, return_state=True)
        retried = transport.retries - retried
    line = outcome(state, time.perf_counter() - t0)
    if first:  # again, once the first task's lazy imports (model classes, peft) and the warm base exist
        freeze_heap()
    line["worker"] = {"pid": os.getpid(), "host": socket.gethostname(), "threads": torch.get_num_threads(),
                      "api_503_retries": retried}
    _append(path, {"event": "finish", "attempt": attempt, "pid": os.getpid(), "status": line["status"]})
    return line


def _connect(cfg: FleetConfig):
    """Connect to the cluster (or start a private one); returns whether this call started Ray."""
    address = cfg.address or None
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS") or None  # none named: a private cluster on this machine
    if address is None or address.split(":")[0] in ("127.0.0.1", "localhost"):
        # A cluster on the loopback address (``peftops stack``, or a private one): Ray would otherwise swap 127.0.0.1
        # for the host's address and then not find its own node. Read by Ray at import, so set both.
        os.environ.setdefault(LOOPBACK_VAR, "0")
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get(LOOPBACK_VAR) == "0":
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    runtime_env: dict[str, Any] = {"env_vars": worker_env()}
    setup = os.environ.get("PEFTOPS_WORKER_SETUP")
    if setup:  # "module.function" run once in each worker process before its first task
        runtime_env["worker_process_setup_hook"] = setup
    kwargs: dict[str, Any] = {"runtime_env": runtime_env, "namespace": "peftops", "log_to_driver": False,
                              "include_dashboard": False}
    if address is None:
        kwargs.pop("namespace")
        kwargs["num_cpus"] = os.cpu_count() or 1
        for k, v in PRIVATE_CLUSTER_ENV.items():  # read by the cluster's processes, which inherit ours
            os.environ.setdefault(k, v)
    else:
        kwargs.pop("include_dashboard")
    ray.init(address=address, **kwargs)
    return True


def run_on_ray(names: list[str], methods: tuple[str, ...], home: str | None, params: PipelineParams,
               cfg: FleetConfig, fleet_run_id: str, progress: bool = False) -> dict[str, dict[str, Any]]:
    """Run every task as a Ray task and return each task's report line (retries and their reasons
    included); a task whose workers kept dying is reported failed."""
    import ray

    started = _connect(cfg)
    home_abs = str(state_home(home))
    try:
        remote = ray.remote(run_task).options(name="peftops-fleet-task", **cfg.remote_options())
        t0 = {n: time.perf_counter() for n in names}
        refs = {n: remote.remote(n, tuple(methods), home_abs, params, fleet_run_id, cfg.torch_threads, progress)
                for n in names}
        outcomes: dict[str, dict[str, Any]] = {}
        for name, ref in refs.items():
            try:
                outcomes[name] = ray.get(ref)
            except Exception as err:  # the workers kept dying (or the cluster went away)
                msg = str(err).strip().splitlines()
                error = f"{type(err).__name__}: {msg[0] if msg else ''}"
                outcomes[name] = {"status": "failed", "seconds": round(time.perf_counter() - t0[name], 2),
                                  "error": error, "state": "Crashed"}
                _close_quietly(name, fleet_run_id, home, f"the fleet gave up on this task: {error}")
            attempts = read_attempts(attempts_file(home, fleet_run_id, name))
            outcomes[name]["attempts"] = len(attempts)
            outcomes[name]["retried"] = retry_reasons(attempts) + (
                [f"attempt {attempts[-1]['attempt']}: worker process {attempts[-1]['pid']} died"]
                if attempts and not attempts[-1]["finished"] else [])
            outcomes[name]["resumed_from"] = _resumed_from(home, name, methods)
        return outcomes
    finally:
        if started:
            ray.shutdown()


def _close_quietly(task: str, fleet_run_id: str, home: str | None, reason: str) -> None:
    """Close what the last dead attempt left Running (its runs send no heartbeats to time out);
    the report already says the task failed, so a tracking server that is down as well is not a
    second error."""
    try:
        _close_dead_attempts(task, fleet_run_id, home, reason)
    except Exception:  # noqa: BLE001 - best effort; the failure itself is reported
        pass


def _resumed_from(home: str | None, task: str, methods: tuple[str, ...]) -> dict[str, int]:
    """The step each method's training resumed from (0: it ran from the start or was cached)."""
    out = {}
    for m in methods:
        f = state_home(home) / "runs" / task / m / "train.json"
        try:
            out[m] = int(json.loads(f.read_text()).get("resumed_from", 0))
        except (OSError, ValueError):
            continue
    return out
