"""Per-task overheads a fleet pays thousands of times: the MLflow tags of a run in one batch, and a
fleet task's Prefect settings built once, not per task."""

from __future__ import annotations

from peftops.pipeline.tracking import Tracker


def test_set_tags_lands_every_tag_in_batches(tmp_path):
    tracker = Tracker(experiment="tags-test", home=tmp_path)
    tags = {f"peftops.k{i:03d}": f"v{i}" for i in range(230)}  # three batches of at most 100
    tags["peftops.number"] = 7  # a non-string value is stored as its text
    with tracker.run("r") as run_id:
        tracker.set_tags(run_id, tags)
    stored = tracker.client.get_run(run_id).data.tags
    assert {k: stored[k] for k in tags} == {k: str(v) for k, v in tags.items()}


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
