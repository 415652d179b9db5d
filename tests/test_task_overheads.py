"""Per-task overheads a fleet pays thousands of times: the MLflow tags of a run in one batch, a
held run's records written in one call when it ends, an experiment described once, a
fleet task's Prefect settings built once, a worker's Prefect client shared by its flow runs, and a
503 from the Prefect server asked again soon."""

from __future__ import annotations

from pathlib import Path

from peftops.pipeline import tracking
from peftops.pipeline.tracking import Tracker


def test_set_tags_lands_every_tag_in_batches(tmp_path):
    tracker = Tracker(experiment="tags-test", home=tmp_path)
    tags = {f"peftops.k{i:03d}": f"v{i}" for i in range(230)}  # three batches of at most 100
    tags["peftops.number"] = 7  # a non-string value is stored as its text
    with tracker.run("r") as run_id:
        tracker.set_tags(run_id, tags)
    stored = tracker.client.get_run(run_id).data.tags
    assert {k: stored[k] for k in tags} == {k: str(v) for k, v in tags.items()}


def _count_log_batch(tracker):
    calls = []
    real = tracker.client.log_batch

    def log_batch(run_id, metrics=(), params=(), tags=(), **kw):
        calls.append((len(metrics), len(params), len(tags)))
        return real(run_id, metrics=metrics, params=params, tags=tags, **kw)

    tracker.client.log_batch = log_batch
    return calls


def test_a_held_run_writes_its_records_in_one_call_when_it_ends(tmp_path):
    tracker = Tracker(experiment="hold-test", home=tmp_path)
    calls = _count_log_batch(tracker)
    with tracker.run("r", params={"lr": 0.1, "nested": {"r": 4}}, hold=True) as run_id:
        assert calls == [(0, 2, 0)]  # the params at once: a running run shows them
        tracker.log_metrics(run_id, {"acc": 0.5})
        tracker.set_tags(run_id, {"stage": "train", "cached": "false"})
        tracker.log_metrics(run_id, {"acc": 0.75, "f1": 0.5}, step=1)
        tracker.set_tags(run_id, {"stage": "done"})  # a tag set again keeps its last value
        tracker.log_params(run_id, {"lr": 0.1})  # the same value again: nothing to refuse, or to send
        assert len(calls) == 1  # nothing else written yet
        assert tracker.client.get_run(run_id).data.metrics == {}
    assert calls == [(0, 2, 0), (3, 0, 2)]  # lr again, with its value: nothing more to write
    data = tracker.client.get_run(run_id).data
    assert data.metrics == {"acc": 0.75, "f1": 0.5} and data.params == {"lr": "0.1", "nested.r": "4"}
    assert data.tags["stage"] == "done" and data.tags["cached"] == "false"
    assert [m.value for m in tracker.client.get_metric_history(run_id, "acc")] == [0.5, 0.75]
    assert tracker.client.get_run(run_id).info.status == "FINISHED"


def test_a_held_run_writes_its_files_in_one_call_as_mlflow_would(tmp_path, monkeypatch):
    """Files, JSON, text and tables of a held run: one log_artifacts call at its end, and what
    is stored is what the unheld calls store (MLflow's own log_table for the tables: the same
    table read back with mlflow's load_table, the same tag for the UI)."""
    tracker = Tracker(experiment="hold-files", home=tmp_path)
    src = tmp_path / "train.json"
    src.write_text('{"steps": 3}')
    rows = [{"method": "lora", "acc": 0.9, "extra": {"r": 4}}, {"method": "full", "acc": 0.8125, "extra": None}]
    more = [{"method": "bitfit", "acc": 0.5, "note": "late"}]

    def log(run_id):
        tracker.log_artifact(run_id, src)
        tracker.log_artifact(run_id, src, "inputs")
        tracker.log_json(run_id, {"b": 1, "a": [1, 2]}, "summary.json")
        tracker.log_text(run_id, "| a |\n", "comparison.md")
        tracker.log_table(run_id, rows, "results_table.json")
        tracker.log_table(run_id, more, "results_table.json")  # appended, as MLflow appends
        for split in ("train", "dev"):
            tracker.log_dataset(run_id, f"t-{split}", "sha256:" + "ab" * 32, f"/data/{split}.json",
                                "training" if split == "train" else "evaluation", {"examples": 3})

    with tracker.run("plain") as plain:
        log(plain)
    calls = []
    real = tracking._artifact_repo
    monkeypatch.setattr(tracking, "_artifact_repo", lambda uri, t: calls.append(uri) or real(uri, t))
    tracker.client.log_artifacts = lambda *a, **k: calls.append("client.log_artifacts")
    tracker.client.log_artifact = lambda *a, **k: calls.append("one file")
    with tracker.run("held", hold=True) as held:
        log(held)
        src.write_text('{"steps": 4}')  # changed after it was logged: the run keeps what it logged
        assert calls == []
    assert calls == [tracker.client.get_run(held).info.artifact_uri]  # one log_artifacts, into the run's root
    c = tracker.client

    def files(run_id, path=None):
        out = {}
        for f in c.list_artifacts(run_id, path):
            out.update(files(run_id, f.path) if f.is_dir else {f.path: Path(c.download_artifacts(run_id, f.path, str(tmp_path / run_id))).read_bytes()})
        return out

    got, want = files(held), files(plain)
    assert set(got) == set(want) == {"train.json", "inputs/train.json", "summary.json", "comparison.md", "results_table.json"}
    assert {k: v for k, v in got.items() if k != "results_table.json"} == {k: v for k, v in want.items() if k != "results_table.json"}
    from mlflow.tracking._tracking_service import utils as tracking_utils

    # load_table finds the runs through mlflow.search_runs, whose store is the process-wide one
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracker.tracking_uri)
    tables = [c.load_table(tracker.experiment_id, "results_table.json", run_ids=[r]) for r in (held, plain)]
    assert tables[0].to_dict("records") == tables[1].to_dict("records")
    assert len(tables[0]) == 3 and list(tables[0].columns) == ["method", "acc", "extra", "note"]
    tag = "mlflow.loggedArtifacts"
    assert c.get_run(held).data.tags[tag] == c.get_run(plain).data.tags[tag]

    def inputs(run_id):
        return sorted((d.dataset.name, d.dataset.digest, d.dataset.source, d.dataset.profile,
                       [(t.key, t.value) for t in d.tags]) for d in c.get_run(run_id).inputs.dataset_inputs)

    assert inputs(held) == inputs(plain) and len(inputs(held)) == 2


def test_a_held_run_that_fails_keeps_its_records_and_a_changed_param_is_refused(tmp_path):
    import pytest
    from mlflow.exceptions import MlflowException

    tracker = Tracker(experiment="hold-fail", home=tmp_path)
    with pytest.raises(ZeroDivisionError):
        with tracker.run("r", params={"lr": 0.1}, hold=True) as run_id:
            tracker.log_metrics(run_id, {"loss": 2.0})
            1 / 0
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.metrics == {"loss": 2.0}
    with tracker.run("s", params={"lr": 0.1}, hold=True) as run_id:
        tracker.log_metrics(run_id, {"loss": 1.0})
        with pytest.raises(MlflowException):  # refused at once, as without hold
            tracker.log_params(run_id, {"lr": 0.2})
    assert tracker.client.get_run(run_id).data.metrics == {"loss": 1.0}  # written before the refusal


def test_a_lingering_child_takes_what_follows_its_block_into_its_one_batch(tmp_path):
    """The last method's run of a pipeline: the gate's and the registry's records logged after
    its block join its held batch; its outcome and end time are those of its block."""
    import time

    tracker = Tracker(experiment="linger", home=tmp_path)
    calls = _count_log_batch(tracker)
    with tracker.run("parent", hold=True) as parent:
        with tracker.run("lora", parent_id=parent, hold=True, linger=True, params={"r": 4}) as child:
            tracker.log_metrics(child, {"dev_accuracy": 0.9})
            tracker.log_text(child, "{}", "merge-parity.json")
        ended = int(time.time() * 1000)
        assert tracker.client.get_run(child).info.status == "RUNNING"  # nothing written since its params
        time.sleep(0.05)
        tracker.set_tags(child, {"gate.promoted": "true", "registry.version": "3"})
        tracker.log_metrics(child, {"pct_of_full": 101.5})
        tracker.set_tags(parent, {"registry.version": "3"})
        assert calls == [(0, 1, 0)]  # the child's params, at once
    assert sorted(calls) == [(0, 0, 1), (0, 1, 0), (2, 0, 2)]  # then one batch each: the parent, the child
    run = tracker.client.get_run(child)
    assert run.info.status == "FINISHED" and run.info.end_time <= ended
    assert run.data.metrics == {"dev_accuracy": 0.9, "pct_of_full": 101.5}
    assert run.data.tags["gate.promoted"] == "true" and run.data.tags["registry.version"] == "3"
    assert [f.path for f in tracker.client.list_artifacts(child)] == ["merge-parity.json"]
    assert tracker.client.get_run(parent).info.status == "FINISHED"


def test_a_lingering_child_keeps_its_outcome_when_its_parent_fails_later(tmp_path):
    import pytest

    tracker = Tracker(experiment="linger-fail", home=tmp_path)
    with pytest.raises(RuntimeError):
        with tracker.run("parent", hold=True) as parent:
            with tracker.run("lora", parent_id=parent, hold=True, linger=True) as child:
                tracker.log_metrics(child, {"dev_accuracy": 0.9})
            tracker.set_tags(child, {"gate.promoted": "false"})
            raise RuntimeError("the publish failed")
    run = tracker.client.get_run(child)
    assert run.info.status == "FINISHED" and run.data.metrics == {"dev_accuracy": 0.9}
    assert run.data.tags["gate.promoted"] == "false"
    assert tracker.client.get_run(parent).info.status == "FAILED"
    with pytest.raises(ZeroDivisionError):  # an error in its own block: it ends FAILED there and then
        with tracker.run("parent", hold=True) as parent:
            with tracker.run("lora", parent_id=parent, hold=True, linger=True) as child:
                tracker.log_metrics(child, {"loss": 2.0})
                1 / 0
    assert tracker.client.get_run(child).info.status == "FAILED"
    assert tracker.client.get_run(child).data.metrics == {"loss": 2.0}
    with pytest.raises(ValueError, match="held child run"):
        with tracker.run("alone", hold=True, linger=True):
            pass


def test_runs_and_models_write_their_files_without_reading_themselves_back(tmp_path, monkeypatch):
    """The artifact root comes back from create_run and create_logged_model; MlflowClient's own
    log_artifacts and log_model_artifacts would read the run or the model again to find it."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tracker = Tracker(experiment="no-read-back", home=tmp_path)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    reads = []
    for name in ("get_run", "get_logged_model"):
        real = getattr(SqlAlchemyStore, name)
        monkeypatch.setattr(SqlAlchemyStore, name, lambda self, *a, _r=real, _n=name, **k: reads.append(_n) or _r(self, *a, **k))
    with tracker.run("r", hold=True) as run_id:
        tracker.log_text(run_id, "x", "note.md")
        model_id = tracker.log_model(run_id, "t-lora", adapter)
    assert reads == []
    monkeypatch.undo()
    assert [f.path for f in tracker.client.list_artifacts(run_id)] == ["note.md"]
    from mlflow.entities import LoggedModelStatus

    model = tracker.client.get_logged_model(model_id)
    assert model.status == LoggedModelStatus.READY
    assert (Path(model.artifact_location.removeprefix("file://")) / "adapter_model.safetensors").read_bytes() == b"weights"


def test_a_held_run_splits_what_exceeds_one_call(tmp_path):
    tracker = Tracker(experiment="hold-many", home=tmp_path)
    calls = _count_log_batch(tracker)
    with tracker.run("r", hold=True) as run_id:
        tracker.log_metrics(run_id, {f"m{i}": i for i in range(950)})
        tracker.set_tags(run_id, {f"t{i}": str(i) for i in range(120)})
    assert calls == [(900, 0, 100), (50, 0, 20)]  # MLflow's limits: 1,000 in all, 100 tags
    data = tracker.client.get_run(run_id).data
    assert len(data.metrics) == 950 and sum(k.startswith("t") for k in data.tags) == 120


def test_an_experiment_is_described_once(tmp_path):
    first = Tracker(experiment="described", home=tmp_path)
    first.describe_experiment("what it holds")
    again = Tracker(experiment="described", home=tmp_path)  # another task of the fleet
    writes = []
    again.client.set_experiment_tag = lambda *a: writes.append(a)
    again.describe_experiment("what it holds")
    assert writes == []
    again.describe_experiment("something else")
    assert len(writes) == 1
    created = Tracker(experiment="described-at-creation", home=tmp_path, description="what it holds")
    assert created.client.get_experiment(created.experiment_id).tags["mlflow.note.content"] == "what it holds"
    task = Tracker(experiment="described-at-creation", home=tmp_path)  # the task's own tracker, in a worker
    task.client.set_experiment_tag = lambda *a: writes.append(a)
    task.describe_experiment("what it holds")
    assert len(writes) == 1  # a fleet's driver described it when it created it: nothing to write


def test_task_flow_settings_turns_heartbeats_off_and_reuses_its_settings():
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.fleet import task_flow_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() == 30
        with task_flow_settings():
            assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() is None
            from prefect.context import get_settings_context
            first = get_settings_context().settings
        with task_flow_settings():
            assert get_settings_context().settings is first  # built once for these settings
        assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() == 30  # restored on exit
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 45}):
        with task_flow_settings():  # other outer settings: built anew from them
            assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() is None
            assert get_settings_context().settings is not first
        assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() == 45


def test_pipeline_flow_names_its_result_storage_so_no_run_asks_the_server(tmp_path, monkeypatch):
    """Without a result storage, each flow run asks the Prefect API server for a default
    storage block; the fleet's pipeline flow names the stage results' folder instead."""
    import prefect.results
    from prefect import flow

    from flows.fleet import adapter_pipeline, pipeline_flow
    from flows.stagecalls import RESULTS_DIR
    from peftops.stages import Layout

    pf = pipeline_flow(str(tmp_path))
    assert pf.result_storage == Layout.of(str(tmp_path)).home / RESULTS_DIR
    assert pipeline_flow(str(tmp_path)) is pf  # one Flow per folder, not one per task
    assert pf.fn is adapter_pipeline.fn

    asked = []
    real = prefect.results._read_server_default_result_storage_block_id
    monkeypatch.setattr(prefect.results, "_read_server_default_result_storage_block_id",
                        lambda: asked.append(1) or real())

    @flow
    def tiny() -> int:
        return 1

    assert tiny() == 1 and asked  # the default: the server is asked
    asked.clear()
    assert tiny.with_options(result_storage=pf.result_storage)() == 1
    assert asked == []


class _Answers:
    """An HTTP transport that answers each request with the next status of ``codes``."""

    def __init__(self, codes):
        self.codes, self.seen = list(codes), 0

    def handle_request(self, request):
        import httpx

        self.seen += 1
        return httpx.Response(self.codes.pop(0), request=request, content=b"{}")


def test_retry503_asks_again_soon_and_hands_a_lasting_503_to_prefect(monkeypatch):
    import httpx

    import flows.ray_fleet as ray_fleet
    from flows.ray_fleet import Retry503

    slept = []
    monkeypatch.setattr(ray_fleet.time, "sleep", slept.append)
    request = httpx.Request("POST", "http://127.0.0.1:1/api/flow_runs/", json={"name": "x"})

    transport = Retry503(_Answers([503, 503, 201]))
    assert transport.handle_request(request).status_code == 201  # the caller sees one answer
    assert transport.inner.seen == 3 and transport.retries == 2 and slept == list(Retry503.delays[:2])

    slept.clear()
    lasting = Retry503(_Answers([503] * (len(Retry503.delays) + 1)))
    assert lasting.handle_request(request).status_code == 503  # Prefect's own back-off takes it from here
    assert lasting.inner.seen == len(Retry503.delays) + 1 and slept == list(Retry503.delays)

    def body():
        yield b"{}"

    streamed = Retry503(_Answers([503, 201]))  # a body that cannot be sent twice is not retried
    assert streamed.handle_request(httpx.Request("POST", "http://127.0.0.1:1/x", content=body())).status_code == 503
    assert streamed.retries == 0


def test_a_worker_runs_its_flow_runs_with_one_prefect_client(prefect_harness):
    from prefect import flow
    from prefect.context import SyncClientContext

    from flows.ray_fleet import Retry503, worker_client, worker_client_context

    @flow
    def which_client() -> int:
        return id(SyncClientContext.get().client)

    client = worker_client()
    assert worker_client() is client and isinstance(client._client._transport, Retry503)
    with worker_client_context():
        first = which_client()
    with worker_client_context():
        second = which_client()
    assert first == second == id(client)  # the flow runs took this process's client, not one each
    assert not client._closed  # and left it open for the next task


def test_a_process_knows_its_heap_is_frozen_without_walking_it():
    """Whether a fleet worker has run its first task is a flag set by freeze_heap, not
    gc.get_freeze_count() (a walk of every frozen object at every task). A fresh process, so
    that freezing does not reach into this test session."""
    import subprocess
    import sys

    code = ("import gc; from peftops.training.memory import freeze_heap, heap_frozen; "
            "before = heap_frozen(); freeze_heap(); print(before, heap_frozen(), gc.get_freeze_count() > 0)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.split() == ["False", "True", "True"]
