"""The registry benchmark still runs end to end (tiny sizes; nothing is timed here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_registry_bench_runs_and_ends_with_json(tmp_path):
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1")
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "registry_bench.py"), "--tasks", "6",
         "--small-tasks", "3", "--per-task", "2", "--repeats", "5", "--publish", "4",
         "--pool", "8", "--out", str(tmp_path / "bench")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["sizes"] == {"small": 6, "large": 12}
    for side in ("ours_small", "ours_large", "mlflow_small"):
        assert result[side]["alias_lookup"]["p95_ms"] > 0
    assert result["mlflow_small"]["metric_threshold"] is None
    assert result["publish_per_s"]["ours_large"] > 0
    assert set(result["targets"]) == {"p95_under_5ms_at_large", "10x_faster_than_mlflow",
                                      "publish_5x_mlflow"}
