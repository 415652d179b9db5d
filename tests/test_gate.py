"""The quality gate: promote at >= min % of FFT, otherwise publish without the alias and record why."""

import json

import pytest

from peftops import stages as P
from peftops.errors import ConfigError
from peftops.pipeline.gate import decide, publish_gated


def test_decide_promotes_at_and_above_the_threshold():
    d = decide(0.95, 1.0)
    assert d.promote and d.pct == pytest.approx(95.0) and "promoted" in d.reason
    assert decide(0.99, 0.98).promote  # above FFT is fine
    assert decide(0.90, 1.0, min_pct=90.0).promote


def test_decide_refuses_below_threshold_or_without_a_usable_baseline():
    d = decide(0.80, 0.90, metric="accuracy")
    assert not d.promote and d.pct == pytest.approx(88.888, abs=1e-3)
    assert "accuracy 0.8000 is 88.9% of FFT's 0.9000, below the 95% gate" in d.reason
    assert not decide(0.5, None).promote and "no FFT baseline" in decide(0.5, None).reason
    assert not decide(0.1, -0.05).promote and "meaningless" in decide(0.1, -0.05).reason  # Matthews can be < 0
    assert not decide(float("nan"), 0.9).promote
    with pytest.raises(ConfigError, match="gate.min_pct_of_full"):
        decide(0.9, 0.9, min_pct=0)


@pytest.fixture
def trained_lora(tiny_home, tiny_params):
    home, _ = tiny_home
    P.stage_prepare(tiny_params, home)
    P.stage_train(tiny_params, "lora", home, progress=False)
    ev = P.stage_evaluate(tiny_params, "lora", home)
    return home, ev.score


def _registry(home):
    from registry import Registry

    return Registry.open(**P.registry_locations(home))


def test_publish_gated_promote_and_refuse_paths(trained_lora, tiny_params):
    home, score = trained_lora
    # refuse: FFT scored twice as well -> 50% of FFT; published, not production, reason recorded
    v, d = publish_gated(tiny_params, home, "lora", full_score=score * 2)
    assert not d.promote and d.pct == pytest.approx(50.0)
    reg = _registry(home)
    got = reg.get("sst2", v.version)
    assert "production" not in got.aliases
    assert got.tags["gate"] == "refused" and "below the 95% gate" in got.tags["gate_reason"]
    assert got.lineage["gate"]["promote"] is False and got.lineage["gate"]["min_pct"] == 95.0
    assert got.metrics["pct_of_full"] == pytest.approx(50.0)
    assert got.metrics["dev_accuracy"] == score

    # promote: the baseline read from runs/<task>/full/eval.json, equal score -> 100%
    full = P.Layout.of(home).run("sst2", "full")
    full.mkdir(parents=True)
    (full / "eval.json").write_text(json.dumps({"metric": "accuracy", "score": score, "metrics": {"accuracy": score}}))
    v2, d2 = publish_gated(tiny_params, home, "lora")
    assert d2.promote and d2.pct == pytest.approx(100.0)
    assert "production" in v2.aliases
    assert reg.get("sst2", alias="production").version == v2.version


def test_publish_gated_logs_the_decision_to_mlflow(trained_lora, tiny_params):
    from mlflow.tracking import MlflowClient

    from peftops.pipeline.tracking import Tracker

    home, score = trained_lora
    tracker = Tracker(experiment="gate-test", home=home)
    with tracker.run("lora") as run_id:
        _, d = publish_gated(tiny_params, home, "lora", full_score=score * 2, tracker=tracker, run_id=run_id)
    run = MlflowClient(tracking_uri=tracker.tracking_uri).get_run(run_id)
    assert run.data.tags["gate.promoted"] == "false" and run.data.tags["gate.reason"] == d.reason
    assert run.data.metrics["gate_pct_of_full"] == pytest.approx(50.0)


def test_cli_reserves_production_for_the_gate(trained_lora, tiny_params, monkeypatch):
    from typer.testing import CliRunner

    from peftops.cli.main import app

    home, score = trained_lora
    monkeypatch.setenv("PEFTOPS_DATA_ROOT", tiny_params.data.data_root)
    r = CliRunner().invoke(app, ["publish", "--method", "lora", "--home", str(home), "--alias", "production"])
    assert r.exit_code == 1 and "set by the quality gate only; use --promote" in r.output
    # no FFT baseline evaluated: published, refused, and the reason is printed
    r = CliRunner().invoke(app, ["publish", "--method", "lora", "--home", str(home), "--promote", "--json"])
    assert r.exit_code == 0, r.output
    assert "no FFT baseline score on this task; not promoted" in r.output
