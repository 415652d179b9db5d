"""docs/own-task.md works as written: its manifest extends the built-in tasks and its task
prepares, trains and evaluates on tiny data through the CLI's --manifest."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from peftops.data.manifest import all_tasks, get_task

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-task.md"
BUGS = ["the app crashes when I open settings", "login fails with an error", "the page is blank",
        "export hangs at ninety percent", "the button does nothing", "sync loses my notes"]
FEATURES = ["please add a dark mode", "support for exporting to pdf", "a keyboard shortcut for search",
            "let me pin favourite items", "add a weekly summary email", "offer a compact layout"]


def _block(lang: str) -> str:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), re.S)[0]


def _write_example(tmp_path: Path) -> tuple[Path, Path]:
    manifest = tmp_path / "mytasks.yaml"
    manifest.write_text(_block("yaml"))
    root = tmp_path / "mydata"
    (root / "tickets").mkdir(parents=True)
    rows = [{"text": t, "kind": "bug"} for t in BUGS] + [{"text": t, "kind": "feature"} for t in FEATURES]
    for split, n in (("train", 4), ("dev", 1)):
        lines = [json.dumps(r) for r in rows] * n
        (root / "tickets" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return manifest, root


def test_a_users_manifest_extends_the_built_in_tasks(tmp_path):
    manifest, _ = _write_example(tmp_path)
    tasks = all_tasks(manifest)
    assert {"sst2", "cola", "mrpc", "rte", "tickets"} <= set(tasks)
    assert get_task("sst2", manifest).source.endswith("tasks.yaml")
    override = tmp_path / "override.yaml"
    override.write_text(manifest.read_text().replace("tickets:", "sst2:", 1))
    assert get_task("sst2", override).template.startswith("Ticket:")  # the user's entry wins
    assert get_task("cola", override).metric == "matthews"


def test_the_documented_task_runs_through_the_cli(tiny_home, tmp_path, monkeypatch):
    from peftops.cli.main import app

    home, _ = tiny_home
    manifest, root = _write_example(tmp_path)
    monkeypatch.setenv("PEFTOPS_DATA_ROOT", str(root))
    params = tmp_path / "params.yaml"
    params.write_text("data: {train_size: 0, dev_size: 0}\n"
                      "train: {steps: 4, batch_size: 8, warmup_steps: 1}\n"
                      "methods: {lora: {lr: 0.02, r: 4, alpha: 8, dropout: 0.0}}\n")
    runner = CliRunner()
    common = ["--manifest", str(manifest), "--task", "tickets", "--home", str(home), "--params", str(params)]
    r = runner.invoke(app, ["prepare", *common])
    assert r.exit_code == 0, r.output
    assert "prepared tickets: train 48, dev 12" in r.output
    r = runner.invoke(app, ["train", *common, "--method", "lora", "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", *common, "--method", "lora", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{"):])
    assert out["metric"] == "accuracy" and out["n"] == 12
    r = runner.invoke(app, ["prepare", "--task", "tickets", "--home", str(home)])
    assert r.exit_code == 1 and "unknown task 'tickets'" in r.output
