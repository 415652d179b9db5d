# .venv/bin/python bench/reliability.py [--json]      (make reliability)
"""Hostile input, tallied: every case runs the real CLI in a fresh process against a tiny pinned
snapshot and task, and counts as *refused with one clear line* only when the command exits 1,
prints exactly one non-empty line on stderr naming what it must name (the file, field or limit),
shows no traceback, and leaves nothing half-written (no prepared split, no registry row).

The cases are the ones users and careless clients tried: YAML alias bombs, a 200 MB sentence,
non-text values, NUL bytes, paths that are directories, symlink loops or climb out of the data
root, unknown labels and keys, markup in names; for the registry deep and huge JSON, safetensors
files whose header lies, a 30 MB adapter config. The last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from tiny import make_snapshot, write_sst2_like  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1",
       "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
SST2 = {"format": "tsv", "header": True, "fields": {"sentence": "sentence"}, "label_field": "label",
        "template": "Review: {sentence}\nSentiment:", "labels": {"0": " negative", "1": " positive"},
        "train": "glue/SST-2/train.tsv", "dev": "glue/SST-2/dev.tsv"}


def cli(*args: str, home: Path, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "peftops.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**ENV, "PEFTOPS_HOME": str(home), **(env or {})})


class World:
    """A fresh state dir with a tiny snapshot, a data root with an SST-2-shaped task, a work dir."""

    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        make_snapshot(self.home)
        self.data = write_sst2_like(root / "data", n_train=16, n_dev=8)
        self.work = root / "work"
        self.work.mkdir()

    def manifest(self, entry_overrides: dict, text: str | None = None) -> Path:
        import yaml

        p = self.work / "tasks.yaml"
        p.write_text(text if text is not None else yaml.safe_dump({"tasks": {"mine": {**SST2, **entry_overrides}}}))
        return p

    def params(self, text: str) -> Path:
        p = self.work / "params.yaml"
        p.write_text(text)
        return p

    def prepare(self, *extra: str, manifest: Path | None = None) -> subprocess.CompletedProcess:
        args = ["prepare", "--home", str(self.home), *extra]
        if manifest is not None:
            p = self.params(f"data:\n  task: mine\n  manifest: {manifest}\n  data_root: {self.data}\n")
            args += ["--params", str(p)]
        return cli(*args, home=self.home, cwd=self.work, env={"PEFTOPS_DATA_ROOT": str(self.data)})

    def half_written(self) -> bool:
        data = self.home / "data"
        return data.exists() and any(p.suffix == ".json" for p in data.rglob("*"))


def bomb(depth: int = 9) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    prev = "a"
    for i in range(depth):
        name = chr(ord("b") + i)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = name
    return "\n".join(lines) + "\n"


def jsonl_task(w: World, row: dict) -> Path:
    d = w.data / "j"
    d.mkdir(exist_ok=True)
    good = [{"sentence": "good film", "label": "1"}, {"sentence": "bad film", "label": "0"}]
    (d / "train.jsonl").write_text("\n".join(json.dumps(r) for r in [*good, row, *good]) + "\n")
    (d / "dev.jsonl").write_text("\n".join(json.dumps(r) for r in good) + "\n")
    return w.manifest({"format": "jsonl", "train": "j/train.jsonl", "dev": "j/dev.jsonl"})


def data_cases() -> dict[str, tuple[Callable[[World], subprocess.CompletedProcess], str]]:
    """name -> (run the case in a fresh world, a text the one line must contain)."""

    def long_row(w):
        f = w.data / "glue" / "SST-2" / "train.tsv"
        with f.open("a") as fh:
            fh.write("x" * (200 * 1024 * 1024) + " \t1\n")
        return w.prepare()

    def directory(w):
        (w.data / "dir").mkdir()
        return w.prepare(manifest=w.manifest({"train": "dir"}))

    def loop(w):
        (w.data / "loop").symlink_to(w.data / "loop")
        return w.prepare(manifest=w.manifest({"train": "loop"}))

    def nul(w):
        f = w.data / "glue" / "SST-2" / "train.tsv"
        f.write_text(f.read_text() + "a\x00b \t1\n")
        return w.prepare()

    def unknown_label(w):
        f = w.data / "glue" / "SST-2" / "train.tsv"
        f.write_text(f.read_text() + "fine film \t7\n")
        return w.prepare()

    def missing(w):
        (w.data / "glue" / "SST-2" / "dev.tsv").unlink()
        return w.prepare()

    def empty(w):
        (w.data / "glue" / "SST-2" / "dev.tsv").write_text("sentence\tlabel\n")
        return w.prepare()

    return {
        "params: YAML alias bomb": (lambda w: cli("prepare", "--params", str(w.params(bomb())), "--home", str(w.home),
                                                  home=w.home, cwd=w.work), "alias"),
        "manifest: YAML alias bomb": (lambda w: w.prepare(manifest=w.manifest({}, text=bomb())), "alias"),
        "params: unknown key": (lambda w: cli("prepare", "--params", str(w.params("train:\n  stepz: 3\n")),
                                              "--home", str(w.home), home=w.home, cwd=w.work), "train.stepz"),
        "params: bad value": (lambda w: cli("prepare", "--params", str(w.params("train:\n  steps: -3\n")),
                                            "--home", str(w.home), home=w.home, cwd=w.work), "train.steps"),
        "manifest: unknown field": (lambda w: w.prepare(manifest=w.manifest({"colour": "red"})), "colour"),
        "data: 200 MB sentence": (long_row, "line"),
        "data: JSON null in a text field": (lambda w: w.prepare(manifest=jsonl_task(w, {"sentence": None, "label": "1"})),
                                            "sentence"),
        "data: number in a text field": (lambda w: w.prepare(manifest=jsonl_task(w, {"sentence": 5, "label": "1"})),
                                         "sentence"),
        "data: list in a text field": (lambda w: w.prepare(manifest=jsonl_task(w, {"sentence": ["x"], "label": "1"})),
                                       "sentence"),
        "data: NUL byte": (nul, "NUL"),
        "data: unknown label": (unknown_label, "label"),
        "data: missing file": (missing, "dev.tsv"),
        "data: empty split": (empty, "dev.tsv"),
        "data: path is a directory": (directory, "dir"),
        "data: symlink loop": (loop, "loop"),
        "data: path climbs out of the data root": (
            lambda w: w.prepare(manifest=w.manifest({"train": "../../../../etc/passwd"})), "data root"),
        "cli: task name is markup": (lambda w: w.prepare("--task", "[/]"), "[/]"),
        "cli: task name is an emoji code": (lambda w: w.prepare("--task", ":x:"), ":x:"),
    }


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def registry_cases() -> dict[str, tuple[Callable[[World], subprocess.CompletedProcess], str]]:
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "base_model_name_or_path": "b"}

    def publish(w: World, weights: bytes, config: dict | str = cfg, lineage: str | None = None):
        d = w.work / "adapter"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        (d / "adapter_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
        (d / "adapter_model.safetensors").write_bytes(weights)
        snap = next((w.home / "base").iterdir())
        digest = json.loads((snap / "manifest.json").read_text())["digest"]
        reg = ["--db", f"sqlite:///{w.home / 'reg.db'}", "--blobs", (w.home / "blobs").as_uri()]
        cli("registry", "register-base", str(snap), "--digest", digest, *reg, home=w.home, cwd=w.work)
        extra = ["--lineage", lineage] if lineage else []
        return cli("registry", "publish", "t", str(d), "--base", digest, *reg, *extra, home=w.home, cwd=w.work)

    ok_t = {"base_model.model.x.lora_A.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
    return {
        "registry: lineage nested 900 deep": (lambda w: publish(w, safetensors_bytes(ok_t, b"\0" * 16),
                                                                 lineage="[" * 900 + "]" * 900), "lineage"),
        # (deeper does not fit one command-line argument; the HTTP API's tests go to 100k)
        "registry: lineage nested 30k deep": (lambda w: publish(w, safetensors_bytes(ok_t, b"\0" * 16),
                                                                 lineage="[" * 30_000 + "]" * 30_000), "lineage"),
        "registry: 30 MB adapter config": (lambda w: publish(w, safetensors_bytes(ok_t, b"\0" * 16),
                                                              config={**cfg, "pad": "x" * (30 * 1024 * 1024)}),
                                           "adapter_config.json"),
        "registry: bogus data_offsets": (lambda w: publish(w, safetensors_bytes(
            {"base_model.model.x.lora_A.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 9999]}},
            b"\0" * 16)), "safetensors"),
        "registry: truncated data": (lambda w: publish(w, safetensors_bytes(ok_t, b"\0" * 16)[:-4]), "safetensors"),
        "registry: non-integer shape": (lambda w: publish(w, safetensors_bytes(
            {"base_model.model.x.lora_A.weight": {"dtype": "F32", "shape": [2, 2.5], "data_offsets": [0, 16]}},
            b"\0" * 16)), "safetensors"),
    }


def control() -> bool:
    """The harness is not vacuous: a valid prepare and a valid adapter (peft's own LoRA of the tiny
    base) go through the same commands and succeed."""
    import peft
    from transformers import AutoModelForCausalLM

    tmp = Path(tempfile.mkdtemp(prefix="peftops-reliability-"))
    try:
        w = World(tmp)
        prepared = w.prepare()
        snap = next((w.home / "base").iterdir())
        model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(snap),
                                    peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
        d = w.work / "adapter"
        model.save_pretrained(d)
        digest = json.loads((snap / "manifest.json").read_text())["digest"]
        reg = ["--db", f"sqlite:///{w.home / 'reg.db'}", "--blobs", (w.home / "blobs").as_uri()]
        cli("registry", "register-base", str(snap), "--digest", digest, *reg, home=w.home, cwd=w.work)
        published = cli("registry", "publish", "t", str(d), "--base", digest, *reg, home=w.home, cwd=w.work)
        return prepared.returncode == 0 and w.half_written() and published.returncode == 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_case(fn, expect: str) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="peftops-reliability-"))
    try:
        w = World(tmp)
        t0 = time.perf_counter()
        r = fn(w)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        traceback = "Traceback" in r.stderr or "Traceback" in r.stdout
        one_line = r.returncode == 1 and len(lines) == 1 and expect in lines[0] and not traceback
        rows = 0
        if (w.home / "reg.db").exists():
            import sqlite3

            from registry.db import PREFIX

            with sqlite3.connect(w.home / "reg.db") as con:
                rows = con.execute(f"select count(*) from {PREFIX}versions").fetchone()[0]
        return {"refused_one_line": one_line and not w.half_written() and rows == 0, "exit": r.returncode,
                "traceback": traceback, "lines": len(lines), "half_written": w.half_written(), "rows": rows,
                "seconds": round(time.perf_counter() - t0, 2), "message": lines[0][:200] if lines else ""}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    cases = {**data_cases(), **registry_cases()}
    results = {}
    for name, (fn, expect) in cases.items():
        results[name] = res = run_case(fn, expect)
        mark = "ok " if res["refused_one_line"] else "BAD"
        print(f"{mark} {name}: exit {res['exit']}, {res['lines']} line(s), {res['seconds']} s — {res['message']}",
              flush=True)
    summary = {"control_valid_inputs_accepted": control(), "bad_inputs_tried": len(results),
               "refused_with_one_clear_line": sum(r["refused_one_line"] for r in results.values()),
               "tracebacks": sum(r["traceback"] for r in results.values()),
               "half_written_or_rows_left": sum(bool(r["half_written"] or r["rows"]) for r in results.values()),
               "failed_cases": [n for n, r in results.items() if not r["refused_one_line"]]}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
