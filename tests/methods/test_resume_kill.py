"""A run killed with SIGKILL and resumed in a new process ends with the same trainable weights,
bit for bit, as an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

DRIVER = Path(__file__).with_name("train_driver.py")
REPO = Path(__file__).resolve().parents[2]


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _run(run_dir: Path, method: str, precision: str) -> str:
    out = subprocess.run([sys.executable, str(DRIVER), str(run_dir), method, "0", precision], capture_output=True,
                         text=True,
                         env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _kill_after_a_checkpoint(run_dir: Path, method: str, precision: str) -> int:
    """Start a slowed run, SIGKILL it mid-way past its first checkpoint; returns the last step seen."""
    proc = subprocess.Popen([sys.executable, str(DRIVER), str(run_dir), method, "0.4", precision], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=_env())
    last, deadline = 0, time.monotonic() + 300
    try:
        for line in proc.stdout:
            if line.startswith("step "):
                last = int(line.split()[1])
            # step 4 is past the step-3 checkpoint, and mid-way between two checkpoints
            if last >= 4 and (run_dir / "checkpoints" / "step-0000003").is_dir():
                os.kill(proc.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "driver too slow"
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"driver was not killed (exit {proc.returncode}, last step {last})"
    return last


@pytest.mark.parametrize("method,precision", [("lora", "fp32"), ("adapter", "fp32"), ("lora", "bf16")])
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, method, precision):
    _run(tmp_path / "straight", method, precision)
    killed_at = _kill_after_a_checkpoint(tmp_path / "resumed", method, precision)
    assert 4 <= killed_at < 14
    assert not (tmp_path / "resumed" / "final.safetensors").exists()
    assert not (tmp_path / "resumed" / "adapter").exists()

    out = _run(tmp_path / "resumed", method, precision)
    resumed_from = int(out.strip().splitlines()[-1].split()[1])
    assert resumed_from in (3, 6, 9, 12) and resumed_from <= killed_at

    a = load_file(str(tmp_path / "straight" / "final.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "final.safetensors"))
    assert a.keys() == b.keys() and a
    for k in a:
        assert a[k].dtype == torch.float32 and torch.equal(a[k], b[k]), k


def test_sigkill_during_a_checkpoint_write_resumes_from_the_newest_intact_one(tmp_path):
    """Killed while writing the step-6 checkpoint: the half-written one is swept, the run resumes
    from step 3, and ends with the weights of an uninterrupted run."""
    _run(tmp_path / "straight", "lora", "fp32")
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(DRIVER), str(run_dir), "lora", "0", "fp32", "1.0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env())
    try:
        for line in proc.stdout:  # the first file of the step-6 checkpoint is written, the rest is not
            if line.startswith("wrote ") and ".step-0000006.tmp-" in line:
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ckpts = run_dir / "checkpoints"
    assert list(ckpts.glob(".step-0000006.tmp-*")) and not (ckpts / "step-0000006").exists()

    out = _run(run_dir, "lora", "fp32")
    assert out.strip().splitlines()[-1] == "resumed_from 3"
    assert not list(ckpts.glob(".step-*"))  # the interrupted write was swept
    a = load_file(str(tmp_path / "straight" / "final.safetensors"))
    b = load_file(str(run_dir / "final.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
