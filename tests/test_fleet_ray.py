"""The fleet on a Ray cluster, through real shared services started by the test (``stack.up``):
PostgreSQL (registry, MLflow and Prefect databases), moto's S3 server (registry blobs, MLflow
artifacts), an MLflow tracking server, a Prefect API server and a Ray head with two worker
processes, all on 127.0.0.1; ``stack.down`` stops them and drops the databases."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from test_orchestration import tiny_fleet_params, write_manifest
from tiny import make_snapshot, write_sst2_like

ray = pytest.importorskip("ray")

TASKS = ("t1", "t2", "t3", "t4")
KILLED = ("k1", "k2")


def _postgres_up() -> bool:
    import psycopg

    try:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="module")
def ray_stack(tmp_path_factory):
    """(home, params, stack state) with the stack's environment applied to this process."""
    if not _postgres_up():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from stack import StackSpec, down, up

    tmp = tmp_path_factory.mktemp("rayfleet")
    home = tmp / "home"
    make_snapshot(home)
    for i, name in enumerate(TASKS + KILLED):
        write_sst2_like(tmp / "data" / name, n_train=32, n_dev=16, seed=i)
    manifest = write_manifest(tmp / "tasks.yaml", {n: f"{n}/glue/SST-2" for n in TASKS + KILLED})
    params = tiny_fleet_params(manifest, tmp / "data")
    state = up(StackSpec(home=str(home), name=f"peftops_t{os.getpid()}", workers=2, cpus_per_worker=1))
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in state["env"].items():
                mp.setenv(k, v)
            with temporary_settings(updates={PREFECT_API_URL: state["env"]["PREFECT_API_URL"]}):
                yield home, params, state
    finally:
        down(home)


def _registry(state):
    from registry import Registry

    return Registry.open(state["env"]["PEFTOPS_REGISTRY_DB"], state["env"]["PEFTOPS_REGISTRY_BLOBS"])


def _s3_keys(state, bucket: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=state["env"]["PEFTOPS_S3_ENDPOINT_URL"])
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]


def _flow_runs(tag: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))


def test_a_fleet_on_ray_publishes_each_adapter_once_through_the_shared_services(ray_stack):
    from mlflow.tracking import MlflowClient

    from flows.fleet import fleet

    home, params, state = ray_stack
    t0 = time.perf_counter()
    report = fleet(tasks=list(TASKS), methods=["lora"], home=str(home), params=params, runner="ray",
                   address=state["env"]["RAY_ADDRESS"], fleet_cfg={"num_cpus": 1, "retries": 1})
    print(f"\nray fleet of {len(TASKS)} tiny tasks on 2 workers: {time.perf_counter() - t0:.1f}s")
    assert report["failed"] == [] and report["runner"] == "ray"
    assert report["trained"] == {t: ["lora"] for t in TASKS}
    workers = {report["tasks"][t]["worker"]["pid"] for t in TASKS}
    assert len(workers) >= 2, "the tasks ran in one worker process"  # two at a time, each its own process
    assert all(report["tasks"][t]["worker"]["threads"] == 1 for t in TASKS)

    with _registry(state) as reg:
        blobs = set(_s3_keys(state, state["buckets"]["registry"]))
        for t in TASKS:
            versions = reg.versions(t).items
            assert [v.version for v in versions] == [report["tasks"][t]["registry"]["version"]] == [1]
            files = dict(versions[0].files)
            assert files and all(any(f["sha256"] in k for k in blobs) for f in files.values())

    client = MlflowClient(state["env"]["MLFLOW_TRACKING_URI"])
    artifacts = _s3_keys(state, state["buckets"]["mlflow"])
    for t in TASKS:
        parent = client.get_run(report["tasks"][t]["mlflow_parent_run_id"])
        assert parent.info.status == "FINISHED" and parent.info.artifact_uri.startswith("mlflow-artifacts:")
        assert "comparison.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert any(parent.info.run_id in k and k.endswith("comparison.md") for k in artifacts)

    runs = _flow_runs(f"fleet-run:{report['flow_run_id']}")
    assert sorted(r.name.removeprefix("pipeline-") for r in runs) == sorted(TASKS)
    assert all(r.state.is_completed() for r in runs)
    assert all({"fleet", f"task:{r.name.removeprefix('pipeline-')}"} <= set(r.tags) for r in runs)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as prefect:  # the stage task runs carry no tags (no slot leases)
        stage_runs = prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in runs])))
    assert stage_runs and not any(tr.tags for tr in stage_runs)


def test_a_worker_killed_mid_training_is_retried_and_resumes(ray_stack):
    """SIGKILL the worker of k1 once its training has checkpointed: Ray re-runs the task in a new
    worker, the training resumes from the checkpoint, each task is published once."""
    from flows.fleet import fleet
    from flows.ray_fleet import read_attempts

    home, params, state = ray_stack
    params = params.model_copy(update={"train": params.train.model_copy(update={"steps": 400, "checkpoint_every": 10})})
    killed: dict[str, object] = {}
    stop = threading.Event()

    def killer():
        deadline = time.monotonic() + 240
        ckpts = Path(home) / "runs" / "k1" / "lora" / "checkpoints"
        while not stop.is_set() and time.monotonic() < deadline:
            for f in (Path(home) / "fleet-runs").glob("*/k1.jsonl"):
                attempts = read_attempts(f)
                if attempts and ckpts.is_dir() and any(ckpts.glob("step-*")):
                    killed["pid"] = attempts[0]["pid"]
                    os.kill(attempts[0]["pid"], signal.SIGKILL)
                    return
            stop.wait(0.05)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    try:
        report = fleet(tasks=list(KILLED), methods=["lora"], home=str(home), params=params, runner="ray",
                       fleet_cfg={"num_cpus": 1, "retries": 2})
    finally:
        stop.set()
        th.join(timeout=10)
    assert "pid" in killed, "the training finished before a checkpoint was seen"
    assert report["failed"] == []
    k1 = report["tasks"]["k1"]
    assert k1["attempts"] == 2 and str(killed["pid"]) in k1["retried"][0] and "died" in k1["retried"][0]
    assert report["retried"] == {"k1": k1["retried"]}
    assert k1["resumed_from"]["lora"] >= 10  # from its last checkpoint, not from step 0
    assert report["tasks"]["k2"]["attempts"] == 1 and report["tasks"]["k2"]["resumed_from"]["lora"] == 0
    with _registry(state) as reg:
        for t in KILLED:
            assert [v.version for v in reg.versions(t).items] == [1]
    runs = _flow_runs(f"fleet-run:{report['flow_run_id']}")
    k1_runs = sorted((r for r in runs if r.name == "pipeline-k1"), key=lambda r: r.created)
    assert [r.state.type.value for r in k1_runs] == ["CRASHED", "COMPLETED"]
