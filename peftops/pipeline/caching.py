"""Cache keys for the pipeline's stages: pure functions of what a stage's output depends on.

A stage's key is a sha256 over

* the **code version**: the source of the ``peftops`` modules that shape outputs (a folder rule:
  ``cli/``, ``reports/`` and ``pipeline/`` are left out, see :data:`NON_SHAPING_DIRS`) plus the torch/transformers/peft versions;
* the **base digest** of the pinned snapshot;
* the **data digest**: sha256 of the task's raw train/dev files, its manifest entry and the
  ``data`` config (computed before ``prepare``, so changing one byte of a file changes the key);
* the stage's own configuration (``train`` + the method's settings for training, ``merge``
  for the parity check, the eval batch size for evaluation).

Nothing volatile (run ids, time, paths) enters a key, so a key hits across flow runs and
processes. A hit is only trusted when the outputs it describes are still on disk, untouched since
they were written under the same key: each stage records its key and a fingerprint of its
outputs (name, size, mtime of every file) beside them (``stage-keys.json``), and
:func:`outputs_current` checks both, so outputs rewritten by anything else (the CLI, the demo,
DVC) or deleted make the stage run again.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

from peftops.config import PipelineParams, to_dict
from peftops.digest import canonical_json, combine, file_sha256, text_sha256
from peftops.fsutil import write_json_atomic

# The package root (this file is peftops/pipeline/caching.py).
PACKAGE_DIR = Path(__file__).resolve().parent.parent
# A folder rule: the front ends (cli/), the reports (reports/) and the orchestration glue (pipeline/:
# caching, change detection, DVC metadata, the quality gate, tracking, the process environment)
# never change what a stage writes; every other module of the package (the shared ground, model/,
# data/, methods/, training/, evaluation/ and the stage functions in stages.py) does.
NON_SHAPING_DIRS = frozenset({"cli", "reports", "pipeline"})
LIBRARIES = ("torch", "transformers", "peft", "safetensors")
STAGES = ("prepare", "train", "evaluate", "merge", "measure")
# What each stage leaves in its directory (data/<task>/ for prepare, runs/<task>/<method>/ otherwise).
STAGE_OUTPUTS = {
    "prepare": ("train.json", "dev.json", "prepared.json"),
    "train": ("adapter", "train.json"),
    "evaluate": ("eval.json",),
    "merge": ("merge.json",),
    "measure": ("measure.json",),
}
KEYS_FILE = "stage-keys.json"


def affects_outputs(relpath: str) -> bool:
    """Whether a file of the ``peftops`` package (path relative to the package) shapes outputs."""
    p = Path(relpath)
    return (p.suffix == ".py" and "__pycache__" not in p.parts
            and not (len(p.parts) > 1 and p.parts[0] in NON_SHAPING_DIRS))


def code_files(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The package's source files that enter the code version, sorted."""
    return sorted(p for p in package_dir.rglob("*.py") if affects_outputs(str(p.relative_to(package_dir))))


# Process-wide cache: the package's files are hashed once per process (a process that edits
# them, such as a test, calls ``code_version.__wrapped__``).
@functools.lru_cache(maxsize=4)
def code_version(package_dir: Path = PACKAGE_DIR) -> str:
    """sha256 over the output-shaping source files and the numeric libraries' versions."""
    named = {str(p.relative_to(package_dir)): file_sha256(p) for p in code_files(package_dir)}
    for lib in LIBRARIES:
        try:
            named[f"lib:{lib}"] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            named[f"lib:{lib}"] = "absent"
    return combine(named)


def task_sources(params: PipelineParams, task: str) -> dict[str, Path]:
    """The raw train and dev files of ``task`` under ``params``' manifest and data root."""
    from peftops.data.manifest import data_path, get_task

    spec = get_task(task, params.data.manifest)
    return {"train": data_path(spec.train, params.data.data_root),
            "dev": data_path(spec.dev, params.data.data_root)}


def data_digest(params: PipelineParams, task: str) -> str:
    """sha256 of the task's raw files, its manifest entry and the data config (not the paths)."""
    from peftops.data.manifest import get_task
    from peftops.data.reading import read_source

    spec = get_task(task, params.data.manifest)
    named = {"entry": text_sha256(canonical_json(spec.entry()))}
    for split, path in task_sources(params, task).items():
        named[split] = hashlib.sha256(read_source(path)).hexdigest()
    data_cfg = {k: v for k, v in to_dict(params.data).items() if k not in ("task", "manifest", "data_root")}
    named["data"] = text_sha256(canonical_json(data_cfg))
    return combine(named)


def method_settings(params: PipelineParams, method: str) -> dict[str, Any]:
    """The method's validated settings with every default filled in: a key does not change when
    params spell a default out (or leave it out)."""
    from peftops.methods import make_config

    return make_config(method, params.methods.get(method)).to_dict()


def resolved_precision(params: PipelineParams) -> str:
    """``train.precision`` as it resolves on this machine's device (fp32 or bf16)."""
    from peftops.stages import pick_device
    from peftops.training.precision import resolve_precision

    return resolve_precision(params.train.precision, pick_device())


def stage_key(stage: str, params: PipelineParams, task: str, method: str | None, data_digest: str,
              base_digest: str, code: str | None = None, measure: dict[str, Any] | None = None) -> str:
    """The cache key of one stage of one (task, method); ``method`` None is the base model.

    prepare <- code, base, data; train <- prepare + train config + the method's settings;
    evaluate <- train (or prepare for the base model) + eval batch size; merge <- train + merge config;
    measure <- train (or prepare) + ``measure`` (the measurement settings, the general text's digest,
    the device and thread count the latencies depend on).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    parts: dict[str, Any] = {"stage": stage, "task": task, "code": code or code_version(),
                             "base": base_digest, "data": data_digest}
    if stage != "prepare":  # what ``train.precision`` resolves to here (auto: bf16 where native) shapes outputs
        parts["precision"] = resolved_precision(params)
    if stage in ("train", "merge") or (stage in ("evaluate", "measure") and method is not None):
        if method is None:
            raise ValueError(f"stage {stage!r} needs a method")
        parts["method"] = method
        parts["method_config"] = method_settings(params, method)
        parts["train"] = to_dict(params.train)
    if stage == "evaluate":
        parts["eval_batch_size"] = params.train.eval_batch_size
    if stage == "merge":
        parts["merge"] = to_dict(params.merge)
    if stage == "measure":
        if measure is None:
            raise ValueError("stage 'measure' needs its measurement settings")
        parts["measure"] = measure
    return text_sha256(canonical_json(parts))


def stage_dir(home: Path, stage: str, task: str, method: str | None) -> Path:
    """The directory a stage writes into: ``data/<task>`` or ``runs/<task>/<method or base>``."""
    if stage == "prepare":
        return Path(home) / "data" / task
    return Path(home) / "runs" / task / (method or "base")


def outputs_fingerprint(out_dir: Path, stage: str) -> str | None:
    """sha256 over (path, size, mtime) of every file of the stage's outputs; None if one is missing."""
    out_dir = Path(out_dir)
    named: dict[str, str] = {}
    for name in STAGE_OUTPUTS[stage]:
        top = out_dir / name
        if not top.exists():
            return None
        for f in sorted(top.rglob("*")) if top.is_dir() else [top]:
            if f.is_file():
                st = f.stat()
                named[str(f.relative_to(out_dir))] = f"{st.st_size}:{st.st_mtime_ns}"
    return combine(named)


def record_key(out_dir: Path, stage: str, key: str) -> None:
    """Note beside a stage's outputs which key produced them, with their fingerprint."""
    path = Path(out_dir) / KEYS_FILE
    keys = _read_keys(path)
    keys[stage] = {"key": key, "outputs": outputs_fingerprint(out_dir, stage)}
    write_json_atomic(path, keys)


def outputs_current(out_dir: Path, stage: str, key: str) -> bool:
    """True when the stage's outputs exist, were written under ``key`` and are unchanged since."""
    rec = _read_keys(Path(out_dir) / KEYS_FILE).get(stage)
    if not isinstance(rec, dict) or rec.get("key") != key:
        return False
    fp = outputs_fingerprint(out_dir, stage)
    return fp is not None and fp == rec.get("outputs")


def _read_keys(path: Path) -> dict[str, Any]:
    try:
        keys = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return keys if isinstance(keys, dict) else {}
