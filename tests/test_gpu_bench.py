"""The prepared GPU check (bench/gpu_bench.py) runs end to end: its CPU smoke run on a tiny in-code
model trains every contender and counts the model's FLOPs from its weights."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_bench_smoke_run_reports_every_contender():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_bench.py"), "--device", "cpu", "--tiny",
                          "--steps", "2"], capture_output=True, text=True, timeout=600, check=True)
    last = json.loads(out.stdout.strip().splitlines()[-1])
    runs = {r["contender"]: r for r in last["runs"]}
    assert set(runs) == {"lora-bf16", "lora-fp32", "full-bf16", "full-fp32"}
    # the tiny model's body: 2 layers of q (64x64), k and v (16x64 each), o (64x64), gate, up (128x64), down
    body = 2 * (64 * 64 + 2 * 16 * 64 + 64 * 64 + 3 * 128 * 64)
    for r in runs.values():
        assert "error" not in r and r["body_params"] == body and r["tokens_per_s"] > 0
        assert r["model_tflops_per_s"] >= 0 and r["real_weights"] is False
    assert last["lora_bf16_vs_fp32"] > 0 and last["lora_bf16_vs_trl"] is None
