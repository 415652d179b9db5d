"""The registry benchmark still runs end to end (tiny sizes; nothing is timed here)."""

import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--tasks", "6", "--small-tasks", "3", "--per-task", "2", "--repeats", "5",
        "--publish", "4", "--pool", "8", "--publishers", "2", "--publish-each", "3",
        "--race-rounds", "2", "--race-burst", "3"]


def _check_race(race: dict, targets: dict) -> None:
    """The side-by-side publish figures: both sides timed, the ratio theirs, the target on it."""
    assert (race["rounds"], race["burst"], len(race["per_round"])) == (2, 3, 2)
    assert all(set(r) == {"ours", "mlflow"} and min(r.values()) > 0 for r in race["per_round"])
    assert race["speedup"] == pytest.approx(race["ours_per_s"] / race["mlflow_per_s"], rel=0.02)
    assert targets["publish_5x_mlflow"] == (race["speedup"] >= 5)
    # What the race waited for first, and what the disks took during each side's bursts.
    assert set(race["settled"]) == {"checkpoint_s", "autovacuum_wait_s"}
    assert min(race["settled"].values()) >= 0
    assert set(race["disk_mb_written"]) == {"ours", "mlflow"}
    assert min(race["disk_mb_written"].values()) >= 0
    # The CPU each side's bursts took: its own process's and the machine's, in the same spans.
    for side in ("ours", "mlflow"):
        cpu = race["cpu_s"][side]
        assert set(cpu) == {"wall", "own", "machine_busy", "steal"}
        assert min(cpu.values()) >= 0 and cpu["wall"] > 0
        assert cpu["own"] <= cpu["wall"] * 1.2 + 0.05  # one thread publishes; ticks are coarse


def _bench(tmp_path, *args) -> dict:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1")
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "registry_bench.py"), *TINY, *args,
         "--out", str(tmp_path / "bench")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_registry_bench_runs_and_ends_with_json(tmp_path):
    result = _bench(tmp_path)
    assert result["sizes"] == {"small": 6, "large": 12}
    for side in ("ours_small", "ours_large", "mlflow_small"):
        assert result[side]["alias_lookup"]["p95_ms"] > 0
    assert result["mlflow_small"]["metric_threshold"] is None
    assert result["publish_per_s"]["ours_large"] > 0
    assert result["publish_per_s"]["ours_large_concurrent_2"] > 0
    assert result["publish_concurrent"]["verified"]
    assert set(result["targets"]) == {"p95_under_5ms_at_large", "10x_faster_than_mlflow",
                                      "publish_5x_mlflow"}
    _check_race(result["publish_race"], result["targets"])
    assert len(result["cpu_probe_s"]) == 2 and min(result["cpu_probe_s"]) > 0


def test_registry_bench_on_postgresql(tmp_path):
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError:
        pytest.skip("PostgreSQL is not listening on 127.0.0.1:5432")
    admin = os.environ.get("PEFTOPS_TEST_PG_ADMIN_URL",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
    result = _bench(tmp_path, "--backend", "postgresql", "--pg-url", admin, "--pg-db",
                    f"peftops_bench_registry_test_{secrets.token_hex(4)}")
    assert result["backends"] == ["postgresql"] and "ours_large" not in result
    pg = result["postgresql"]
    assert pg["ours_large"]["metric_threshold"]["p95_ms"] > 0
    assert pg["publish_per_s"]["ours_large_concurrent_2"] > 0
    assert pg["publish_concurrent"]["verified"]
    # The targets are against MLflow's registry on the same server; SQLite's ratios beside.
    assert pg["mlflow_reference"] == "MLflow on PostgreSQL, this run"
    assert pg["mlflow_small"]["alias_lookup"]["p95_ms"] > 0
    assert pg["publish_per_s"]["mlflow_small"] > 0
    assert isinstance(pg["targets"]["10x_faster_than_mlflow"], bool)
    assert pg["mlflow_reference_sqlite"] == "MLflow on SQLite, this run"
    assert pg["speedup_vs_mlflow_small_sqlite"]["alias_lookup"]["p50"] > 0
    # Side by side with MLflow on the same server; the SQLite reference has no race of its own.
    _check_race(pg["publish_race"], pg["targets"])
    assert isinstance(pg["targets_sqlite"]["publish_5x_mlflow"], bool)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_search_ab_runs_both_statements_and_ends_with_json(tmp_path, backend):
    """bench/search_ab.py (the version row's copy of the task name against the join it
    replaced): both variants timed per query, their ratio theirs, on PostgreSQL each
    statement explained; the script itself checks that both return the same tasks."""
    args = ["--backend", backend, "--tasks", "30", "--repeats", "24"]
    if backend == "postgresql":
        try:
            socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
        except OSError:
            pytest.skip("PostgreSQL is not listening on 127.0.0.1:5432")
        args += ["--pg-url", os.environ.get("PEFTOPS_TEST_PG_ADMIN_URL",
                                            "postgresql://postgres@127.0.0.1:5432/postgres"),
                 "--pg-db", f"peftops_bench_search_ab_test_{secrets.token_hex(4)}"]
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "search_ab.py"), *args],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert (result["backend"], result["versions"]) == (backend, 300)
    assert set(result["queries"]) == {"filter_by_tag", "filter_by_method", "metric_threshold"}
    for q in result["queries"].values():
        assert min(q["copy"]["p50_ms"], q["join"]["p50_ms"]) > 0
        assert q["join_over_copy_p50"] == pytest.approx(
            q["join"]["p50_ms"] / q["copy"]["p50_ms"], abs=0.01)
        if backend == "postgresql":
            for e in q["explain"].values():
                assert e["buffer_hits"] > 0 and e["execution_ms"] > 0
        else:
            assert "explain" not in q
