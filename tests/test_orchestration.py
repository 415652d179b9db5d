"""Fleet orchestration on tiny models: cache hits across flow runs, retraining only what changed,
one task's failure isolated, MLflow runs linked to Prefect flow runs and registry versions."""

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tiny import make_snapshot, write_sst2_like

SST2_ENTRY = {
    "format": "tsv", "header": True, "fields": {"sentence": "sentence"}, "label_field": "label",
    "template": "Review: {sentence}\nSentiment:", "labels": {"0": " negative", "1": " positive"},
    "metric": "accuracy",
}


def write_manifest(path: Path, tasks: dict[str, str]) -> Path:
    """A manifest of SST-2-shaped tasks: name -> folder (under the data root) holding train/dev.tsv."""
    entries = {name: {**SST2_ENTRY, "train": f"{d}/train.tsv", "dev": f"{d}/dev.tsv"} for name, d in tasks.items()}
    path.write_text(yaml.safe_dump({"tasks": entries}, sort_keys=False))
    return path


def tiny_fleet_params(manifest: Path, root: Path):
    from peftops.config import DataConfig, PipelineParams, TrainConfig

    return PipelineParams(
        data=DataConfig(task="alpha", data_root=str(root), manifest=str(manifest), train_size=0, dev_size=0),
        train=TrainConfig(steps=4, batch_size=8, warmup_steps=1),
        methods={"lora": {"lr": 2e-2, "r": 4, "alpha": 8, "dropout": 0.0}},
    )


@pytest.fixture(scope="module")
def fleet_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    home = tmp / "home"
    make_snapshot(home)
    root = tmp / "data"
    for i, name in enumerate(("alpha", "beta")):
        write_sst2_like(root / name, n_train=32, n_dev=16, seed=i)
    manifest = write_manifest(tmp / "tasks.yaml", {"alpha": "alpha/glue/SST-2", "beta": "beta/glue/SST-2"})
    return home, root, tiny_fleet_params(manifest, root)


def test_stage_keys_follow_exactly_their_inputs(fleet_env, tmp_path):

    from peftops.pipeline import caching

    home, root, params = fleet_env
    data = caching.data_digest(params, "alpha")
    assert data != caching.data_digest(params, "beta")
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)  # the same bytes elsewhere: the same digest
    moved_params = params.model_copy(update={"data": params.data.model_copy(update={"data_root": str(moved)})})
    assert caching.data_digest(moved_params, "alpha") == data

    def key(stage, p=params, code="c1"):
        return caching.stage_key(stage, p, "alpha", "lora", data, "sha256:base", code=code)

    more_steps = params.model_copy(update={"train": params.train.model_copy(update={"steps": 5})})
    other_r = params.model_copy(update={"methods": {"lora": {**params.methods["lora"], "r": 8}}})
    looser = params.model_copy(update={"merge": params.merge.model_copy(update={"tolerance": 1e-2})})
    assert key("train") != key("train", more_steps) != key("train", other_r)
    assert key("train") != key("train", code="c2")
    assert key("train") == key("train", looser) and key("merge") != key("merge", looser)
    assert caching.stage_key("prepare", more_steps, "alpha", None, data, "sha256:base", code="c1") == \
        caching.stage_key("prepare", params, "alpha", None, data, "sha256:base", code="c1")


def test_a_cache_record_is_trusted_only_while_its_outputs_are_untouched(tmp_path):
    import os

    from peftops.pipeline import caching

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "w.safetensors").write_bytes(b"w")
    (tmp_path / "train.json").write_text("{}")
    assert not caching.outputs_current(tmp_path, "train", "k")
    caching.record_key(tmp_path, "train", "k")
    assert caching.outputs_current(tmp_path, "train", "k") and not caching.outputs_current(tmp_path, "train", "k2")
    st = (tmp_path / "train.json").stat()
    os.utime(tmp_path / "train.json", ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # rewritten by something else
    assert not caching.outputs_current(tmp_path, "train", "k")
    caching.record_key(tmp_path, "train", "k")
    (tmp_path / "adapter" / "w.safetensors").unlink()
    assert not caching.outputs_current(tmp_path, "train", "k")


def _train_mtime(home: Path, task: str) -> int:
    return (home / "runs" / task / "lora" / "train.json").stat().st_mtime_ns


def test_fleet_caches_unchanged_tasks_and_retrains_only_changed_data(prefect_harness, fleet_env):
    from flows.fleet import fleet

    home, root, params = fleet_env
    first = fleet(methods=["lora"], home=str(home), params=params)
    assert first["trained"] == {"alpha": ["lora"], "beta": ["lora"]} and first["failed"] == []
    mtimes = {t: _train_mtime(home, t) for t in ("alpha", "beta")}

    # nothing changed: every cacheable stage of every task is a hit, nothing trains
    t0 = time.perf_counter()
    second = fleet(methods=["lora"], home=str(home), params=params)
    second_s = time.perf_counter() - t0
    assert second["trained"] == {}
    for t in ("alpha", "beta"):
        assert all(second["tasks"][t]["cached"].values()), second["tasks"][t]["cached"]
        assert _train_mtime(home, t) == mtimes[t]
        assert second["tasks"][t]["registry"] == first["tasks"][t]["registry"]  # same adapter, same version
    assert second_s < 30, f"an unchanged fleet took {second_s:.1f}s"
    print(f"\nunchanged fleet of 2 tasks: {second_s:.1f}s (first run {first['seconds']:.1f}s)")

    # one task's data changes: that task alone retrains (and publishes a new version)
    train_file = root / "alpha" / "glue" / "SST-2" / "train.tsv"
    train_file.write_text(train_file.read_text() + "a very good film \t1\n")
    third = fleet(methods=["lora"], home=str(home), params=params)
    assert third["trained"] == {"alpha": ["lora"]}
    assert not any(third["tasks"]["alpha"]["cached"].values())
    assert all(third["tasks"]["beta"]["cached"].values())
    assert _train_mtime(home, "beta") == mtimes["beta"]
    assert third["tasks"]["alpha"]["registry"]["version"] == first["tasks"]["alpha"]["registry"]["version"] + 1

    # a cache hit whose outputs were deleted is not trusted: the stage reruns
    shutil.rmtree(home / "runs" / "beta" / "lora" / "adapter")
    fourth = fleet(methods=["lora"], home=str(home), params=params)
    assert fourth["trained"] == {"beta": ["lora"]}
    assert (home / "runs" / "beta" / "lora" / "adapter").is_dir()
    assert json.loads((home / "fleet-report.json").read_text())["trained"] == {"beta": ["lora"]}

    # MLflow: one experiment per task, parent run per pipeline run, child per method, linked
    from peftops.pipeline.tracking import default_tracking_uri

    client = MlflowClient(tracking_uri=default_tracking_uri(home))
    exp = client.get_experiment_by_name("peftops-alpha")
    parent_id = third["tasks"]["alpha"]["mlflow_parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.data.tags["prefect.flow_run_id"] and parent.info.experiment_id == exp.experiment_id
    assert parent.data.tags["registry.version"] == str(third["tasks"]["alpha"]["registry"]["version"])
    (child,) = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert child.info.run_name == "lora"
    assert child.data.tags["registry.version"] == str(third["tasks"]["alpha"]["registry"]["version"])
    assert child.data.tags["peftops.train_cached"] == "false"
    assert child.data.tags["prefect.flow_run_id"] == parent.data.tags["prefect.flow_run_id"]


def test_fleet_one_failing_task_does_not_stop_the_others(prefect_harness, fleet_env, tmp_path):
    from flows.fleet import FleetFailed, fleet

    home, root, params = fleet_env

    manifest = write_manifest(tmp_path / "tasks.yaml", {"alpha": "alpha/glue/SST-2", "broken": "late/glue/SST-2",
                                                        "beta": "beta/glue/SST-2"})
    p = params.model_copy(update={"data": params.data.model_copy(update={"manifest": str(manifest)})})
    state = fleet(methods=["lora"], home=str(home), params=p, max_concurrency=2, return_state=True)
    assert state.is_failed()
    with pytest.raises(FleetFailed, match="1 of 3 tasks failed .*broken"):
        state.result()
    report = json.loads((home / "fleet-report.json").read_text())
    assert report["failed"] == ["broken"]
    assert report["tasks"]["alpha"]["status"] == report["tasks"]["beta"]["status"] == "completed"
    assert "data file not found" in report["tasks"]["broken"]["error"]
    assert (home / "runs" / "beta" / "lora" / "adapter").is_dir()

    # the rerun picks up where the failed run stopped: only the failed task does any work
    write_sst2_like(root / "late", n_train=32, n_dev=16, seed=7)
    rerun = fleet(methods=["lora"], home=str(home), params=p, max_concurrency=2)
    assert rerun["trained"] == {"broken": ["lora"]} and rerun["failed"] == []


def test_only_storage_io_is_retried():
    from tasks import evaluate_task, merge_task, prepare_task, publish_task, train_task

    assert publish_task.retries == 2
    assert all(t.retries == 0 for t in (prepare_task, train_task, evaluate_task, merge_task))
