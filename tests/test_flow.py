"""The main job end to end on a tiny model: Prefect flow, MLflow runs, registry row, parity."""

import json

from mlflow.tracking import MlflowClient


def test_demo_flow_end_to_end(prefect_harness, tiny_home, tiny_params):
    from flows.demo import demo_flow
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
    assert lora.data.metrics["merge_max_abs_dlogit"] < 1e-3
    assert lora.data.tags["gate.promoted"] == str(gate["promote"]).lower()
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.md", "demo-summary.json"} <= artifacts
