"""The optional mirror of our registry into MLflow's Model Registry: versions with their tags,
idempotence, aliases kept in step (moved, deleted), our registry as the source of truth."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).parent / "registry"))
from regtestlib import DIGEST, make_adapter, make_base  # noqa: E402

from peftops.errors import MirrorError  # noqa: E402
from peftops.pipeline.mirror import mirror_task  # noqa: E402
from peftops.pipeline.tracking import MirrorVersion, Tracker, registered_model_name  # noqa: E402


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """One SQLite MLflow store for the module (creating its tables takes seconds); every test
    mirrors a task of its own, so each has a registered model of its own."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def reg(tmp_path):
    from registry import Registry

    r = Registry.open(f"sqlite:///{tmp_path / 'reg.db'}", (tmp_path / "blobs").as_uri())
    r.register_base(make_base(tmp_path / "base"), digest=DIGEST, name="tiny")
    yield r
    r.close()


def _versions(client, name):
    return {int(mv.tags["peftops.version"]): mv for mv in client.search_model_versions(f"name = '{name}'")}


def _aliases(client, name):
    """alias -> our version number, through the MLflow versions' tags."""
    ours = {mv.version: n for n, mv in _versions(client, name).items()}
    return {a: ours[int(v)] for a, v in client.get_registered_model(name).aliases.items()}


def test_versions_appear_tagged_and_a_second_mirror_creates_nothing(reg, mlflow_uri, tmp_path):
    task = "mirror-tags"
    tracker = Tracker(experiment="mirror-tags", tracking_uri=mlflow_uri)
    client = MlflowClient(tracking_uri=mlflow_uri)
    # v1 as the pipeline publishes it: trained in a run that logged the adapter as a model
    a1 = make_adapter(tmp_path / "a1", seed=1)
    with tracker.run("lora") as run_id:
        model_id = tracker.log_model(run_id, f"{task}-lora", a1)
    v1 = reg.publish(task, a1, base_digest=DIGEST, method="lora", aliases=["production"],
                     lineage={"mlflow_run_id": run_id, "mlflow_model_id": model_id})
    # v2 published without MLflow (`peftops publish`): its files are logged from our registry
    v2 = reg.publish(task, make_adapter(tmp_path / "a2", seed=2), base_digest=DIGEST, method="bitfit")

    report = mirror_task(tracker, reg, task)
    name = registered_model_name(task)
    assert name == "peftops-mirror-tags" and report.model_name == name
    assert report.created == [1, 2] and report.aliases == {"production": 1} and not report.removed
    got = _versions(client, name)
    assert set(got) == {1, 2}
    for ours, mv in ((v1, got[1]), (v2, got[2])):
        assert mv.tags["peftops.task"] == task and mv.tags["peftops.version"] == str(ours.version)
        assert mv.tags["peftops.adapter_id"] == ours.adapter_id
        assert mv.tags["peftops.base_digest"] == DIGEST and mv.tags["peftops.method"] == ours.method
    assert got[1].run_id == run_id and got[1].tags["peftops.mlflow_model_id"] == model_id
    assert got[1].source == client.get_logged_model(model_id).artifact_location
    run2 = client.get_run(got[2].run_id)  # the run that logged v2 from the registry's files
    assert run2.info.run_name == f"registry-{task}-v2" and run2.data.tags["peftops.mirror"] == "true"
    files = {a.path for a in client.list_logged_model_artifacts(got[2].tags["peftops.mlflow_model_id"])}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert _aliases(client, name) == {"production": 1}
    assert client.get_registered_model(name).tags["peftops.task"] == task

    runs = len(client.search_runs([tracker.experiment_id]))
    models = len(client.search_logged_models([tracker.experiment_id]))
    again = mirror_task(tracker, reg, task)
    assert again.created == [] and again.removed == [] and again.aliases_deleted == []
    assert {n: mv.version for n, mv in _versions(client, name).items()} == {n: mv.version for n, mv in got.items()}
    assert len(client.search_runs([tracker.experiment_id])) == runs
    assert len(client.search_logged_models([tracker.experiment_id])) == models


def test_aliases_and_deletions_follow_our_registry(reg, mlflow_uri, tmp_path):
    task = "mirror-aliases"
    tracker = Tracker(experiment="mirror-aliases", tracking_uri=mlflow_uri)
    client = MlflowClient(tracking_uri=mlflow_uri)
    name = registered_model_name(task)
    for seed in (1, 2, 3):
        reg.publish(task, make_adapter(tmp_path / f"a{seed}", seed=seed), base_digest=DIGEST, method="lora",
                    aliases=["production"] if seed == 1 else [])
    reg.set_alias(task, "staging", 3)
    mirror_task(tracker, reg, task)
    assert _aliases(client, name) == {"production": 1, "staging": 3}

    reg.set_alias(task, "production", 2)  # the gate promoted v2
    client.set_registered_model_alias(name, "by-hand", _versions(client, name)[1].version)  # not ours
    report = mirror_task(tracker, reg, task)
    assert _aliases(client, name) == {"production": 2, "staging": 3}
    assert report.aliases == {"production": 2, "staging": 3} and report.aliases_deleted == ["by-hand"]

    reg.delete_alias(task, "staging")
    reg.deprecate(task, 3)
    assert mirror_task(tracker, reg, task).aliases_deleted == ["staging"]
    assert _aliases(client, name) == {"production": 2}
    assert _versions(client, name)[3].tags["peftops.status"] == "deprecated"

    reg.delete(task, 1)  # gone from our registry: gone from the mirror
    report = mirror_task(tracker, reg, task)
    assert report.removed == [1] and set(_versions(client, name)) == {2, 3}
    assert _aliases(client, name) == {"production": 2}
    # MLflow versions the mirror did not make are left alone
    untagged = client.create_model_version(name, _versions(client, name)[2].source)
    mirror_task(tracker, reg, task)
    assert client.get_model_version(name, untagged.version).version == untagged.version


def test_a_version_that_cannot_be_mirrored_is_reported_and_the_rest_mirrored(mlflow_uri, tmp_path):
    task = "mirror-partial"
    tracker = Tracker(experiment="mirror-partial", tracking_uri=mlflow_uri)
    client = MlflowClient(tracking_uri=mlflow_uri)
    a1 = make_adapter(tmp_path / "a1", seed=1)

    def fetch(dest):
        import shutil

        shutil.copytree(a1, dest)

    versions = [MirrorVersion(1, "id-one", DIGEST, "lora", fetch=fetch),
                MirrorVersion(2, "id-two", DIGEST, "lora", aliases=("production",),
                              run_id="0" * 32)]  # a run of another MLflow store, no files
    with pytest.raises(MirrorError, match=r"v2: no logged model of mirror-partial v2") as info:
        tracker.mirror_to_model_registry(task, versions)
    assert "alias 'production'" in str(info.value)
    assert info.value.report.created == [1]
    assert set(_versions(client, registered_model_name(task))) == {1}
    assert client.get_registered_model(registered_model_name(task)).aliases == {}


def test_the_cli_resyncs_and_refuses_unknown_tasks(mlflow_uri, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from registry import Registry

    from peftops.cli.main import app
    from peftops.stages import registry_locations

    home = tmp_path / "home"
    with Registry.open(**registry_locations(home)) as r:
        r.register_base(make_base(tmp_path / "base"), digest=DIGEST, name="tiny")
        r.publish("mirror-cli", make_adapter(tmp_path / "a1", seed=1), base_digest=DIGEST, method="lora",
                  aliases=["production"])
    runner = CliRunner()
    args = ["mlflow-mirror", "--home", str(home), "--tracking-uri", mlflow_uri]
    r = runner.invoke(app, [*args, "--task", "mirror-cli", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out[0]["model_name"] == "peftops-mirror-cli" and out[0]["created"] == [1]
    assert out[0]["aliases"] == {"production": 1} and out[0]["error"] is None
    r = runner.invoke(app, args)  # every task: nothing new
    assert r.exit_code == 0 and "peftops-mirror-cli" in r.output and "none" in r.output
    r = runner.invoke(app, [*args, "--task", "nope"])
    assert r.exit_code == 1 and "nope" in r.output and "does not exist" in r.output
    r = runner.invoke(app, ["mlflow-mirror", "--help"], terminal_width=200)
    assert all(opt in r.output for opt in ("--task", "--tracking-uri", "--experiment", "--json", "--home"))


def test_a_failed_mirror_is_a_warning_not_a_failed_publish(monkeypatch):
    import flows.pipeline as fp
    import peftops.pipeline.mirror as mirror

    warnings = []

    class Log:
        def warning(self, msg, *args):
            warnings.append(msg % args)

        def info(self, msg, *args):
            pass

    def broken(*_args):
        raise ConnectionError("MLflow is down")

    monkeypatch.setattr(fp, "get_run_logger", lambda: Log())
    monkeypatch.setattr(mirror, "mirror_task", broken)
    monkeypatch.setattr("peftops.stages.registry_locations",
                        lambda home: {"db_url": "sqlite://", "blob_uri": Path(home).as_uri()})
    assert fp._mirror(object(), "/tmp", "sst2") is None
    assert len(warnings) == 1 and "MLflow is down" in warnings[0] and "peftops mlflow-mirror --task sst2" in warnings[0]


def test_the_pipeline_mirrors_when_the_setting_is_on(prefect_harness, tiny_home, tiny_params, monkeypatch):
    from flows.demo import demo_flow
    from peftops.config import PipelineParams, TrackingConfig

    assert PipelineParams().tracking.mirror_registry is False  # off unless asked for
    monkeypatch.setenv("PEFTOPS_SYSTEM_METRICS_INTERVAL", "0.2")
    home, _ = tiny_home
    params = tiny_params.model_copy(update={"tracking": TrackingConfig(mirror_registry=True)})
    summary = demo_flow(home=str(home), progress=False, params=params, methods=("lora",))
    mirrored = summary["mlflow"]["model_registry"]
    version = summary["registry"]["version"]
    assert mirrored["model_name"] == "peftops-sst2" and mirrored["created"] == [version]
    client = MlflowClient(tracking_uri=summary["mlflow"]["tracking_uri"])
    mv = _versions(client, "peftops-sst2")[version]
    assert mv.tags["peftops.adapter_id"] == summary["registry"]["adapter_id"]
    lora = client.search_runs([client.get_experiment_by_name("peftops-sst2").experiment_id],
                              filter_string="tags.mlflow.runName = 'lora'")[0]
    assert mv.run_id == lora.info.run_id  # the run's own logged model, not a copy
    # no FFT baseline in this run: the gate refused, so MLflow has no production alias either
    assert summary["gate"]["promote"] is False and client.get_registered_model("peftops-sst2").aliases == {}
