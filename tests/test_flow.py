"""The main job end to end on a tiny model: Prefect flow, MLflow runs, registry row, parity."""

import json

from mlflow.tracking import MlflowClient


def test_demo_flow_end_to_end(prefect_harness, tiny_home, tiny_params, monkeypatch):
    from flows.demo import demo_flow

    monkeypatch.setenv("PEFTOPS_SYSTEM_METRICS_INTERVAL", "0.2")  # the tiny trainings take about a second
    from registry import Registry

    home, _ = tiny_home
    summary = demo_flow(home=str(home), progress=False, params=tiny_params)

    rows = {r["method"]: r for r in summary["rows"]}
    assert set(rows) == {"base", "lora", "full"}
    assert rows["full"]["pct_of_full"] == 100.0
    assert rows["lora"]["trainable_params"] < rows["full"]["trainable_params"]
    assert rows["lora"]["pct_of_full"] == 100.0 * rows["lora"]["score"] / rows["full"]["score"]
    assert summary["merge_parity"]["passed"] and summary["merge_parity"]["max_abs_dlogit"] < 1e-3
    on_disk = json.loads((home / "demo-summary.json").read_text())
    assert on_disk["rows"] == summary["rows"]

    # registry: one LoRA version in PEFT format, pinned to the snapshot's digest, with lineage
    from peftops.stages import registry_locations

    reg = Registry.open(**registry_locations(home))
    v = reg.get("sst2", version=summary["registry"]["version"])
    assert v.method == "lora" and v.base_digest == summary["base_digest"]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(v.files)
    assert v.lineage["data_digest"] == summary["data_digest"]
    assert v.lineage["merge_parity"]["passed"] is True
    assert v.metrics["dev_accuracy"] == rows["lora"]["score"]

    # quality gate: production only at >= 95% of the FFT score; the decision is recorded either way
    gate = summary["gate"]
    assert gate["pct"] == rows["lora"]["pct_of_full"] and gate["min_pct"] == 95.0
    assert gate["promote"] == (rows["lora"]["pct_of_full"] >= 95.0)
    assert ("production" in v.aliases) == gate["promote"] == ("production" in summary["registry"]["aliases"])
    assert v.tags["gate"] == ("promoted" if gate["promote"] else "refused") and v.lineage["gate"]["reason"]

    # MLflow: a parent run and a child run per method with per-step loss
    client = MlflowClient(tracking_uri=summary["mlflow"]["tracking_uri"])
    parent = client.get_run(summary["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED"
    exp = client.get_experiment_by_name("peftops-sst2")
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_name = {r.info.run_name: r for r in children}
    assert set(by_name) == {"lora", "full"}
    lora = by_name["lora"]
    assert lora.info.run_id == v.lineage["mlflow_run_id"]
    assert lora.data.tags["registry.version"] == str(v.version)
    history = client.get_metric_history(lora.info.run_id, "loss")
    assert [m.step for m in history] == list(range(1, tiny_params.train.steps + 1))
    stamps = [m.timestamp for m in sorted(history, key=lambda m: m.step)]
    assert stamps == sorted(stamps) and stamps[-1] > stamps[0]  # logged while training, step by step
    assert lora.data.metrics["merge_max_abs_dlogit"] < 1e-3
    assert lora.data.tags["gate.promoted"] == str(gate["promote"]).lower()
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.md", "demo-summary.json"} <= artifacts

    # what an MLflow user expects of a run: datasets, system metrics, the source tags, a logged model
    inputs = lora.inputs.dataset_inputs
    contexts = {d.dataset.name: {t.value for t in d.tags if t.key == "mlflow.data.context"} for d in inputs}
    assert contexts == {"sst2-train": {"training"}, "sst2-dev": {"evaluation"}}
    assert all(d.dataset.digest == summary["data_digest"].split(":")[-1][:36] for d in inputs)
    assert any(k.startswith("system/") for k in lora.data.metrics), sorted(lora.data.metrics)
    assert lora.data.tags["mlflow.source.name"] == "peftops demo" and parent.data.tags["mlflow.source.git.commit"]
    models = client.search_logged_models(experiment_ids=[exp.experiment_id])
    by_run = {m.source_run_id: m for m in models}
    assert "READY" in str(by_run[lora.info.run_id].status)
    files = {a.path for a in client.list_logged_model_artifacts(by_run[lora.info.run_id].model_id)}
    assert "adapter_model.safetensors" in files
    assert by_name["full"].info.run_id not in by_run  # FFT's full copy is not logged as a model
    assert "mlflow.note.content" in exp.tags

    # Prefect: the flow run published its result table as a Markdown artifact
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def artifacts():
        async with get_client() as pc:
            return await pc.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["demo-sst2"])))

    found = asyncio.run(artifacts())
    assert found and "| lora |" in found[0].data and f"v{v.version}" in found[0].data
