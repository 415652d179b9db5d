"""User errors reach the terminal as one clear line, without a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "peftops.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_bad_params_file_is_one_line_without_traceback(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  steps: -3\n")
    r = run_cli("prepare", "--params", str(p), "--home", str(tmp_path / "h"), cwd=tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and "train.steps" in r.stderr and str(p) in r.stderr


def test_missing_data_file_names_it_and_writes_nothing(tiny_home, tmp_path):
    home, root = tiny_home
    (root / "glue" / "SST-2" / "dev.tsv").unlink()
    r = run_cli("prepare", "--home", str(home), cwd=tmp_path, env_extra={"PEFTOPS_DATA_ROOT": str(root)})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "dev.tsv" in r.stderr and "not found" in r.stderr
    assert not (home / "data" / "sst2").exists() or not any((home / "data" / "sst2").iterdir())


def test_corrupted_snapshot_is_refused_by_the_cli(tiny_home, tmp_path):
    home, root = tiny_home
    cfg = home / "base" / "gemma-3-270m" / "config.json"
    cfg.write_text(cfg.read_text().replace('"hidden_size": 32', '"hidden_size": 33'))
    r = run_cli("prepare", "--home", str(home), cwd=tmp_path, env_extra={"PEFTOPS_DATA_ROOT": str(root)})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "config.json" in r.stderr and "corrupted" in r.stderr


@pytest.mark.parametrize("args", [["train", "--method", "nope"], ["evaluate", "--method", "lora"]])
def test_stage_errors_are_actionable(tiny_home, tmp_path, args):
    home, root = tiny_home
    r = run_cli(*args, "--home", str(home), cwd=tmp_path, env_extra={"PEFTOPS_DATA_ROOT": str(root)})
    assert r.returncode == 1 and "Traceback" not in r.stderr and "error:" in r.stderr


@pytest.mark.parametrize("name", ["[/]", "[bold]x", ":x:"])
def test_user_text_prints_literally(tiny_home, tmp_path, name):
    """A task name that looks like markup or an emoji code reaches the terminal as typed."""
    home, root = tiny_home
    r = run_cli("prepare", "--task", name, "--home", str(home), cwd=tmp_path,
                env_extra={"PEFTOPS_DATA_ROOT": str(root)})
    assert r.returncode == 1 and "Traceback" not in r.stderr and "MarkupError" not in r.stderr
    assert f"unknown task '{name}'" in " ".join(r.stderr.split())
