"""Incremental retrains: which tasks a change affects (pure rule and from git), and
`peftops retrain --since REV` retraining exactly those on a tiny model."""

import json
import subprocess
from pathlib import Path

import yaml
from typer.testing import CliRunner

from test_orchestration import write_manifest
from tiny import make_snapshot, write_sst2_like

MANIFEST = {"alpha": {"train": "alpha/train.tsv", "dev": "alpha/dev.tsv", "template": "{s}"},
            "beta": {"train": "glue/B/train.tsv", "dev": "glue/B/dev.tsv", "template": "{s}"}}
PARAMS = {"data": {"task": "alpha", "train_size": 10}, "train": {"steps": 4}, "methods": {"lora": {"r": 4}}}


def affected(changed, **kw):
    from peftops.pipeline.changes import affected_tasks

    kw.setdefault("new_manifest", MANIFEST)
    kw.setdefault("data_dir", "data")
    return affected_tasks(changed, **kw)


def test_code_changes_affect_every_task_but_front_ends_do_not():
    assert affected(["peftops/training/loop.py"]) == {"alpha": ["code: peftops/training/loop.py"],
                                                      "beta": ["code: peftops/training/loop.py"]}
    assert set(affected(["peftops/stages.py"])) == set(affected(["peftops/config.py"])) == {"alpha", "beta"}
    assert set(affected(["peftops/methods/lora/method.py"])) == {"alpha", "beta"}
    assert affected(["peftops/cli/main.py", "peftops/pipeline/tracking.py", "peftops/reports/charts.py",
                     "peftops/reports/compare.py", "README.md", "flows/fleet.py"]) == {}


def test_params_sections_that_shape_training_affect_every_task():
    new = {**PARAMS, "train": {"steps": 8}}
    assert affected(["params.yaml"], params_path="params.yaml", old_params=PARAMS, new_params=new) == {
        "alpha": ["params: train"], "beta": ["params: train"]}
    only_task = {**PARAMS, "data": {**PARAMS["data"], "task": "beta"}}
    assert affected(["params.yaml"], params_path="params.yaml", old_params=PARAMS, new_params=only_task) == {}
    methods = {**PARAMS, "methods": {"lora": {"r": 8}}}
    assert set(affected(["params.yaml"], params_path="params.yaml", old_params=PARAMS, new_params=methods)) == {
        "alpha", "beta"}


def test_manifest_entries_added_or_changed_affect_those_tasks():
    new = {**MANIFEST, "beta": {**MANIFEST["beta"], "template": "B: {s}"}, "gamma": MANIFEST["alpha"]}
    got = affected(["peftops/data/tasks.yaml"], manifest_path="peftops/data/tasks.yaml", old_manifest=MANIFEST, new_manifest=new)
    assert got == {"beta": ["manifest: entry changed"], "gamma": ["manifest: new task"]}


def test_data_files_and_their_dvc_files_affect_their_tasks():
    assert affected(["data/alpha/dev.tsv"]) == {"alpha": ["data: data/alpha/dev.tsv"]}
    assert affected(["data/glue/B.dvc"]) == {"beta": ["data: data/glue/B.dvc"]}
    assert affected(["data/glue.dvc"]) == {"beta": ["data: data/glue.dvc"]}
    assert affected(["data/glue/B/train.tsv.dvc", "data/other/x.tsv"]) == {"beta": ["data: data/glue/B/train.tsv.dvc"]}
    assert affected(["data/alpha/dev.tsv"], data_dir=None) == {}  # data outside the repository


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "ci@example.com")
    _git(repo, "config", "user.name", "ci")
    return repo


def test_affected_since_reads_commits_and_the_working_tree(tmp_path):
    from peftops.pipeline.changes import affected_since

    repo = _repo(tmp_path)
    for name in ("alpha", "glue/B"):
        (repo / "data" / name).mkdir(parents=True)
        for split in ("train", "dev"):
            (repo / "data" / name / f"{split}.tsv").write_text("s\tlabel\nx\t0\n")
    (repo / "tasks.yaml").write_text(yaml.safe_dump({"tasks": MANIFEST}))
    (repo / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "one")
    kw = dict(params_file=repo / "params.yaml", manifest=repo / "tasks.yaml", data_dir=repo / "data")
    assert affected_since("HEAD", repo, **kw) == {}

    (repo / "data" / "glue" / "B" / "dev.tsv").write_text("s\tlabel\ny\t1\n")  # uncommitted
    assert affected_since("HEAD", repo, **kw) == {"beta": ["data: data/glue/B/dev.tsv"]}
    _git(repo, "commit", "-qam", "two")
    (repo / "data" / "alpha.dvc").write_text("outs: []\n")  # untracked
    assert affected_since("HEAD~1", repo, **kw) == {"alpha": ["data: data/alpha.dvc"],
                                                    "beta": ["data: data/glue/B/dev.tsv"]}


def test_retrain_command_retrains_exactly_the_affected_tasks(prefect_harness, tmp_path):
    from peftops.cli.main import app

    repo = _repo(tmp_path)
    for i, name in enumerate(("alpha", "beta")):
        write_sst2_like(repo / "data" / name, n_train=32, n_dev=16, seed=i)
    manifest = write_manifest(repo / "tasks.yaml", {"alpha": "alpha/glue/SST-2", "beta": "beta/glue/SST-2"})
    params = repo / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"task": "alpha", "manifest": str(manifest), "data_root": str(repo / "data"), "train_size": 0,
                 "dev_size": 0},
        "train": {"steps": 4, "batch_size": 8, "warmup_steps": 1},
        "methods": {"lora": {"lr": 2e-2, "r": 4, "alpha": 8, "dropout": 0.0}}}))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "data")
    beta_train = repo / "data" / "beta" / "glue" / "SST-2" / "train.tsv"
    beta_train.write_text(beta_train.read_text() + "a dull plot \t0\n")
    _git(repo, "commit", "-qam", "more beta data")

    home = tmp_path / "home"
    make_snapshot(home)
    args = ["retrain", "--since", "HEAD~1", "--repo", str(repo), "--params", str(params), "--home", str(home)]
    dry = CliRunner().invoke(app, [*args, "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["affected"] == {"beta": ["data: data/beta/glue/SST-2/train.tsv"]}
    assert not (home / "runs").exists()

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((home / "fleet-report.json").read_text())
    assert report["since"] == "HEAD~1" and list(report["affected"]) == ["beta"]
    assert report["trained"] == {"beta": ["lora"]} and report["failed"] == []
    assert (home / "runs" / "beta" / "lora" / "adapter").is_dir()
    assert not (home / "runs" / "alpha").exists()

    nothing = CliRunner().invoke(app, ["retrain", "--since", "HEAD", "--repo", str(repo), "--params", str(params),
                                       "--home", str(home)])
    assert nothing.exit_code == 0 and "nothing to retrain" in nothing.output
