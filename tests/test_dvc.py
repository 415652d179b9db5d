"""`dvc repro` of the project's dvc.yaml on a tiny config, in a temporary git + DVC repository:
the stages call the CLI, metrics and plots are readable by DVC, and the data digest DVC records
is in the registry's lineage."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tiny import make_snapshot, write_sst2_like

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(cwd: Path, *cmd: str, timeout: int = 600) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "PYTHONPATH": str(REPO)}  # the checkout under test, whatever the install
    env.pop("PEFTOPS_HOME", None)
    env.pop("PEFTOPS_DATA_ROOT", None)
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_dvc_repro_runs_the_cli_stages_and_the_registry_records_dvc_digests(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    # the project's pipeline, narrowed to one task and one method
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    spec["vars"][0]["tasks"] = {"sst2": {"data": "glue/SST-2"}}
    spec["vars"][0]["run_methods"] = ["lora"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    # the package's source: its code is a dependency of the stages (and the manifest a parameter file)
    shutil.copytree(REPO / "peftops", repo / "peftops", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "params.yaml").write_text(yaml.safe_dump({
        "base": {"name": "gemma-3-270m", "source": "gguf", "expected_digest": None},
        "data": {"task": "sst2", "train_size": 0, "dev_size": 0, "seed": 0, "max_length": 256},
        "train": {"steps": 3, "batch_size": 8, "warmup_steps": 1, "eval_batch_size": 16},
        "merge": {"tolerance": 0.001, "probe_size": 16},
        "methods": {"lora": {"lr": 0.02, "r": 4, "alpha": 8, "dropout": 0.0}},
    }, sort_keys=False))
    (repo / ".gitignore").write_text(".peftops/\n")
    write_sst2_like(repo / "data", n_train=32, n_dev=16)
    make_snapshot(repo / ".peftops")

    _run(repo, "git", "init", "-q")
    _run(repo, "dvc", "init", "-q")
    _run(repo, "dvc", "add", "-q", "data/glue/SST-2")  # the data as DVC tracks it in the project
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "commit", "-qm", "data")
    _run(repo, "dvc", "repro")

    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert {"base", "prepare@sst2", "train@sst2-lora", "evaluate@sst2-lora", "merge@sst2", "publish@sst2"} <= set(lock)
    data_md5 = {d["path"]: d["md5"] for d in lock["prepare@sst2"]["deps"] if d["path"].startswith("data/")}
    assert set(data_md5) == {"data/glue/SST-2/train.tsv", "data/glue/SST-2/dev.tsv"}

    metrics = json.loads(_run(repo, "dvc", "metrics", "show", "--json"))
    flat = json.dumps(metrics)
    assert "metrics/sst2/lora.json" in flat and "max_abs_dlogit" in flat
    lora = json.loads((repo / "metrics" / "sst2" / "lora.json").read_text())
    assert 0.0 <= lora["dev"]["accuracy"] <= 1.0 and lora["train"]["steps"] == 3
    loss = (repo / "plots" / "sst2" / "lora-loss.csv").read_text().splitlines()
    assert loss[0] == "step,loss,lr,grad_norm" and len(loss) == 4

    published = json.loads((repo / "published" / "sst2.json").read_text())
    from registry import Registry

    from peftops.stages import registry_locations

    reg = Registry.open(**registry_locations(repo / ".peftops"))
    v = reg.get("sst2", version=published["version"])
    assert v.lineage["dvc_data_md5"] == data_md5

    assert "up to date" in _run(repo, "dvc", "status")  # nothing reruns

    # a change to the training loop's code makes train (and what follows it) stale, not prepare
    loop = repo / "peftops" / "training" / "loop.py"
    loop.write_text(loop.read_text() + "\n# changed\n")
    status = json.loads(_run(repo, "dvc", "status", "--json"))
    assert "train@sst2-lora" in status and "prepare@sst2" not in status
