"""Demo, compare, fleet and retrain run one per-task pipeline with one cache key: a fleet after a
comparison of the same task, method and parameters trains nothing, and the code version follows
the code that shapes outputs only."""

import shutil
from pathlib import Path

from test_compare import write_general

ROOT = Path(__file__).resolve().parents[1]


def test_a_fleet_after_a_compare_of_the_same_task_trains_nothing(prefect_harness, tiny_home, tiny_params, tmp_path):
    from flows.compare import run_compare
    from flows.fleet import fleet
    from peftops.evaluation.forgetting import ForgettingConfig
    from peftops.reports.compare import CompareConfig

    home, _ = tiny_home
    cfg = CompareConfig(task="sst2", methods=("lora",), out_dir=str(tmp_path / "reports"),
                        latency_batch_sizes=(1,), latency_batches=1,
                        forgetting=ForgettingConfig(source=str(write_general(tmp_path / "g.jsonl")), size=4,
                                                    max_tokens=64))
    first = run_compare(tiny_params, cfg, home, progress=False)
    assert first.cached["train.lora"] is False
    train_json = home / "runs" / "sst2" / "lora" / "train.json"
    mtime = train_json.stat().st_mtime_ns

    report = fleet(tasks=["sst2"], methods=["lora"], home=str(home), params=tiny_params)
    outcome = report["tasks"]["sst2"]
    assert outcome["status"] == "completed" and outcome["trained"] == [] and report["trained"] == {}
    assert outcome["cached"]["train.lora"] and outcome["cached"]["evaluate.lora"] and outcome["cached"]["prepare"]
    assert train_json.stat().st_mtime_ns == mtime  # the adapter compare trained is the one published
    assert outcome["registry"]["version"] == 1

    # and a comparison after the fleet measures again only what it had not measured
    again = run_compare(tiny_params, cfg.model_copy(update={"reuse": True}), home, progress=False)
    assert again.cached["train.lora"] and again.cached["measure.lora"]
    assert [r.to_dict() for r in again.rows] == [r.to_dict() for r in first.rows]


def test_the_code_version_follows_output_shaping_code_only(tmp_path):
    from peftops.pipeline.caching import code_version

    pkg = tmp_path / "peftops"
    shutil.copytree(ROOT / "peftops", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    version = code_version.__wrapped__  # uncached: the files change between calls
    before = version(pkg)
    for front in ("reports/charts.py", "reports/compare.py", "cli/main.py", "pipeline/tracking.py"):
        (pkg / front).write_text((pkg / front).read_text() + "\n# a colour, a flag, a log line\n")
    assert version(pkg) == before
    for shaping in ("training/loop.py", "stages.py", "data/reading.py", "methods/lora/method.py", "config.py"):
        f = pkg / shaping
        original = f.read_text()
        f.write_text(original + "\n# changed\n")
        assert version(pkg) != before, shaping
        f.write_text(original)
    assert version(pkg) == before
