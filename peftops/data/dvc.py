"""DVC-facing files and DVC's record of the data, without importing DVC.

* :func:`write_loss_plot` / :func:`write_metrics` turn a run's ``train.json`` / ``eval.json``
  into the small files ``dvc plots`` and ``dvc metrics show`` read.
* :func:`dvc_lineage` finds the ``dvc.lock`` of the DVC project holding a task's data files
  and returns the md5 DVC recorded for each, for the registry's lineage. An md5 is reported only
  when it matches the bytes the prepared splits were built from, so a stale lock says nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from peftops.fsutil import write_json_atomic, write_text_atomic

LOCK = "dvc.lock"


def write_loss_plot(run_dir: Path, out: Path) -> Path:
    """Per-step ``step,loss,lr,grad_norm`` CSV from a run's ``train.json``."""
    history = json.loads((Path(run_dir) / "train.json").read_text()).get("history") or []
    cols = ["step", "loss", "lr", "grad_norm"]
    lines = [",".join(cols)] + [",".join(str(rec.get(c, "")) for c in cols) for rec in history]
    write_text_atomic(Path(out), "\n".join(lines) + "\n")
    return Path(out)


def write_metrics(run_dir: Path, out: Path) -> Path:
    """Dev metrics plus the run's training cost as one small JSON file."""
    run_dir = Path(run_dir)
    ev = json.loads((run_dir / "eval.json").read_text())
    doc: dict[str, Any] = {"dev": ev["metrics"], "n_dev": ev["n"]}
    train = run_dir / "train.json"
    if train.exists():
        t = json.loads(train.read_text())
        doc["train"] = {k: t[k] for k in ("train_time_s", "examples_per_s", "peak_memory_mb", "trainable_params",
                                           "adapter_bytes", "steps") if k in t}
        doc["train"]["final_loss"] = t["losses"][-1] if t.get("losses") else None
    write_json_atomic(Path(out), doc)
    return Path(out)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def find_lock(path: Path) -> Path | None:
    """The ``dvc.lock`` of the DVC project (a folder with ``.dvc/``) that contains ``path``."""
    for parent in Path(path).resolve().parents:
        if (parent / ".dvc").is_dir():
            lock = parent / LOCK
            return lock if lock.exists() else None
    return None


def dvc_lineage(data_dir: Path) -> dict[str, Any]:
    """``{"dvc_data_md5": {repo-relative path: md5}}`` for the sources of a prepared task
    (``data_dir`` holds its ``train.json``/``dev.json``); empty when DVC does not track them."""
    recorded: dict[str, str] = {}
    for split in ("train", "dev"):
        try:
            source = Path(json.loads((Path(data_dir) / f"{split}.json").read_text())["source"]).resolve()
        except (FileNotFoundError, KeyError, ValueError):
            continue
        lock = find_lock(source)
        if lock is None:
            continue
        rel = Path(os.path.relpath(source, lock.parent)).as_posix()
        deps = {d.get("path"): d.get("md5") for st in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values()
                for d in st.get("deps", []) or []}
        md5 = deps.get(rel)
        if md5 and source.exists() and _md5(source) == md5:
            recorded[rel] = md5
    return {"dvc_data_md5": recorded} if recorded else {}

