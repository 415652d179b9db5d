"""`peftops compare` on a tiny model: one table per task, CSV/JSON/PNG outputs, MLflow runs, reuse."""

import csv
import json
import random

import pytest
from mlflow.tracking import MlflowClient

from flows.compare import run_compare
from peftops.reports.compare import CompareConfig, parse_methods
from peftops.errors import ConfigError
from peftops.evaluation.forgetting import ForgettingConfig
from tiny import FILL, NEG, POS


def write_general(path, n=12, seed=1):
    """A seed-task-shaped JSONL in the tiny tokenizer's vocabulary."""
    rng = random.Random(seed)
    words = POS + NEG + FILL
    with open(path, "w") as fh:
        for i in range(n):
            row = {"id": f"t{i}", "instruction": " ".join(rng.choice(words) for _ in range(5)),
                   "instances": [{"input": "", "output": " ".join(rng.choice(words) for _ in range(8))}]}
            fh.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def compare_cfg(tmp_path):
    general = write_general(tmp_path / "general.jsonl")
    return CompareConfig(task="sst2", methods=("lora", "full"), out_dir=str(tmp_path / "reports"),
                         latency_batch_sizes=(1, 16), latency_batches=2,
                         forgetting=ForgettingConfig(source=str(general), size=8, max_tokens=64),
                         experiment="compare-test", command="peftops compare --task sst2 --methods lora,full")


def test_compare_writes_one_table_with_every_field_and_logs_mlflow(prefect_harness, tiny_home, tiny_params, compare_cfg, tmp_path):
    home, _ = tiny_home
    result = run_compare(tiny_params, compare_cfg, home, progress=False)

    rows = {r.method: r for r in result.rows}
    assert list(rows) == ["base", "lora", "full"]
    assert rows["full"].pct_of_full == 100.0
    assert rows["lora"].pct_of_full == pytest.approx(100.0 * rows["lora"].score / rows["full"].score)
    assert 0 < rows["lora"].trainable_params < rows["full"].trainable_params
    assert rows["full"].trainable_pct == pytest.approx(100.0)
    assert rows["lora"].adapter_bytes < rows["full"].adapter_bytes
    for r in (rows["lora"], rows["full"]):
        assert r.train_steps == tiny_params.train.steps and r.train_time_s > 0 and r.peak_train_memory_mb > 0
        assert set(r.latency_ms) == {"1", "16"} and all(v > 0 for v in r.latency_ms.values())
        assert r.general_nll_before == rows["base"].general_nll_after  # one reference: the base model
    assert rows["base"].general_nll_delta == 0.0 and rows["base"].trainable_params == 0

    out = tmp_path / "reports" / "sst2"
    data = json.loads((out / "comparison.json").read_text())
    assert data["budget"]["train"]["steps"] == tiny_params.train.steps and data["metric"] == "accuracy"
    by_method = {m["method"]: m for m in data["methods"]}
    for key in ("score", "pct_of_full", "trainable_params", "trainable_pct", "peak_train_memory_mb", "train_time_s",
                "adapter_bytes", "latency_ms_b1", "latency_ms_b16", "general_nll_delta"):
        assert key in by_method["lora"], key
    with open(out / "comparison.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["method"] for r in table] == ["base", "lora", "full"]
    assert float(table[1]["latency_ms_b16"]) == pytest.approx(rows["lora"].latency_ms["16"])
    md = (out / "comparison.md").read_text()
    assert "| lora |" in md and "% of FFT" in md and "latency b16" in md and "Budget: 12 steps" in md
    for png in ("score_pct_of_full", "memory", "latency", "forgetting"):
        assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    client = MlflowClient(tracking_uri=result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["task"] == "sst2"
    exp = client.get_experiment_by_name("compare-test")
    children = {r.info.run_name: r for r in client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    assert set(children) == {"lora", "full"}
    assert children["lora"].data.metrics["latency_ms_b1"] > 0
    assert children["lora"].data.metrics["pct_of_full"] == pytest.approx(rows["lora"].pct_of_full)
    assert len(client.get_metric_history(children["lora"].info.run_id, "loss")) == tiny_params.train.steps
    charts = {a.path for a in client.list_artifacts(parent.info.run_id, "charts")}
    assert "charts/latency.png" in charts and "charts/score_pct_of_full.png" in charts
    assert {"comparison.md", "comparison.csv", "comparison.json"} <= {a.path for a in client.list_artifacts(
        parent.info.run_id)}

    # Unchanged inputs with reuse: nothing is trained again and the numbers are the same.
    train_json = home / "runs" / "sst2" / "lora" / "train.json"
    mtime = train_json.stat().st_mtime_ns
    again = run_compare(tiny_params, compare_cfg.model_copy(update={"reuse": True}), home, progress=False)
    assert train_json.stat().st_mtime_ns == mtime
    assert [r.to_dict() for r in again.rows] == [r.to_dict() for r in result.rows]
    # A changed measurement setting re-measures without retraining.
    remeasured = run_compare(tiny_params, compare_cfg.model_copy(update={"reuse": True, "latency_batches": 1}),
                             home, progress=False)
    assert train_json.stat().st_mtime_ns == mtime
    assert remeasured.row("lora").train_time_s == result.row("lora").train_time_s
    assert remeasured.row("lora").latency_ms != result.row("lora").latency_ms


def test_compare_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        CompareConfig(task="sst2", methods=("lora", "nope"))
    with pytest.raises(ConfigError, match="compare.methods"):
        CompareConfig(task="sst2", methods=("lora", "lora"))
    with pytest.raises(ConfigError, match="compare.latency_batch_sizes"):
        CompareConfig(task="sst2", methods=("lora",), latency_batch_sizes=(0,))
    assert parse_methods(" lora, full ") == ("lora", "full")
    assert parse_methods("all")[-1] == "full"


def test_compare_cli_rejects_an_unknown_method_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from peftops.cli.main import app

    r = CliRunner().invoke(app, ["compare", "--task", "sst2", "--methods", "lora,nope", "--home", str(tmp_path)])
    assert r.exit_code == 1 and "unknown method 'nope'" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["compare", "--task", "sst2", "--latency-batch-sizes", "1,x", "--home", str(tmp_path)])
    assert r.exit_code == 1 and "latency_batch_sizes" in r.output and "Traceback" not in r.output


def test_latency_batch_sizes_parse():
    from peftops.reports.compare import parse_batch_sizes

    assert parse_batch_sizes("1, 16") == (1, 16)
    for bad in ("", "0", "1,-2", "a"):
        with pytest.raises(ConfigError, match="latency_batch_sizes"):
            parse_batch_sizes(bad)


def test_compare_runs_every_registered_method(prefect_harness, tiny_params, compare_cfg, tmp_path):
    import torch
    from transformers import Gemma3ForCausalLM

    from peftops.model.snapshot import snapshot_dir, write_snapshot
    from peftops.methods import available_methods
    from tiny import tiny_config, tiny_tokenizer

    # prefix tuning needs virtual + real tokens within the sliding window: widen the tiny model's 16
    home = tmp_path / "home-wide"
    tok = tiny_tokenizer()
    config = tiny_config(vocab_size=len(tok))
    config.sliding_window = 256
    torch.manual_seed(0)
    write_snapshot(Gemma3ForCausalLM(config).eval(), tok, snapshot_dir("gemma-3-270m", home), "gemma-3-270m")
    methods = parse_methods("all")
    assert set(methods) == set(available_methods()) and methods[-1] == "full"
    params = tiny_params.model_copy(update={
        "train": tiny_params.train.model_copy(update={"steps": 3}),
        "methods": {**tiny_params.methods, "prompt": {"num_virtual_tokens": 4}, "prefix": {"num_virtual_tokens": 4}}})
    cfg = compare_cfg.model_copy(update={"methods": methods, "latency_batch_sizes": (1,), "latency_batches": 1})
    result = run_compare(params, cfg, home, progress=False)
    rows = {r.method: r for r in result.rows}
    assert set(rows) == {"base", *methods}
    for name in methods:
        r = rows[name]
        assert r.trainable_params > 0 and r.adapter_bytes > 0 and r.latency_ms["1"] > 0
        assert r.general_nll_after > 0 and r.pct_of_full is not None
    assert rows["prompt"].trainable_params < rows["lora"].trainable_params < rows["full"].trainable_params


def test_summary_across_tasks_averages_where_a_percentage_exists():
    from peftops.reports.comparison_files import summary_markdown
    from peftops.reports.tables import CompareRow

    def row(task, method, score, pct, metric="accuracy"):
        return CompareRow(task=task, method=method, metric=metric, score=score, metrics={metric: score},
                          pct_of_full=pct, trainable_params=1, trainable_pct=0.1, peak_train_memory_mb=1.0,
                          memory_kind="rss", train_time_s=1.0, train_steps=1, examples_per_s=1.0, adapter_bytes=1,
                          latency_ms={"1": 1.0}, general_nll_before=1.0, general_nll_after=1.0, dev_examples=2)

    md = summary_markdown({
        "a": [row("a", "lora", 0.9, 99.0), row("a", "full", 0.9, 100.0)],
        "b": [row("b", "lora", 0.8, 97.0), row("b", "full", 0.8, 100.0)],
        "c": [row("c", "lora", 0.1, None, "matthews"), row("c", "full", 0.0, None, "matthews")],
    })
    assert "| lora | 0.900 (99.0%) | 0.800 (97.0%) | 0.100 | 98.0% (2 of 3 tasks) |" in md
    assert "c (matthews)" in md and "means nothing" in md
