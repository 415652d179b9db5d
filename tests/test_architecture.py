"""The layers run one way (registry <- peftops core <- tasks <- flows <- cli), the core imports
no Prefect and only tracking imports MLflow: the import-linter contracts in pyproject.toml."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    exe = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_a_lower_layer_importing_a_higher_one_is_caught(tmp_path):
    """The contracts can fail: a core module importing a flow breaks the layers contract."""
    import shutil

    for name in ("peftops", "tasks", "flows", "registry", "stack"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "peftops" / "training" / "intruder.py").write_text("import flows.fleet\n")
    exe = Path(sys.executable).with_name("lint-imports")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([str(exe), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode != 0
    assert "peftops.training is not allowed to import flows" in out.stdout
