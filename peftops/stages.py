"""The pipeline's stages as typed functions: a config in, paths or metrics out.

The CLI, DVC (``dvc.yaml``) and Prefect (``tasks/``) are thin front ends over these. Every
stage reads its inputs from and writes its outputs to the state directory, so stages can run
in separate processes and be cached by their inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from peftops.config import PipelineParams, state_home, to_dict
from peftops.data.dvc import dvc_lineage
from peftops.data.manifest import get_task
from peftops.data.prepared import PreparedData, load_prepared, prepare
from peftops.errors import PeftopsError
from peftops.evaluation.evaluate import EvalResult, evaluate
from peftops.evaluation.merge import PROBE_BATCH, ParityCertificate, keep_adapter_logits, merge_adapter
from peftops.fsutil import write_json_atomic
from peftops.methods import get_method, make_config
from peftops.methods.card import portable_copy
from peftops.model.params import count_params
from peftops.model.snapshot import (BaseSnapshot, import_base, load_model, load_tokenizer, open_snapshot,
                                    pad_token_id, snapshot_dir)
from peftops.training.loop import TrainResult, train
from peftops.training.memory import release_memory
from peftops.training.precision import keep_activation_dtype, resolve_precision, storage_dtype

if TYPE_CHECKING:
    from peftops.evaluation.measure import MeasureConfig


def pick_device() -> torch.device:
    """$PEFTOPS_DEVICE, else CUDA when present, else CPU."""
    env = os.environ.get("PEFTOPS_DEVICE")
    if env:
        return torch.device(env)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Layout:
    """Where each stage keeps its outputs under the state directory."""

    home: Path

    @classmethod
    def of(cls, home: str | Path | None = None) -> "Layout":
        return cls(state_home(home))

    def data(self, task: str) -> Path:
        return self.home / "data" / task

    def run(self, task: str, method: str) -> Path:
        return self.home / "runs" / task / method

    def base(self, name: str) -> Path:
        return snapshot_dir(name, self.home)


def stage_base(params: PipelineParams, home: str | Path | None = None, force: bool = False) -> BaseSnapshot:
    """Pin the base model: build its snapshot once, then verify it by digest."""
    return import_base(params.base, home, force=force)


def _snapshot(params: PipelineParams, home: str | Path | None) -> BaseSnapshot:
    path = Layout.of(home).base(params.base.name)
    return open_snapshot(path, params.base.expected_digest)


def stage_prepare(params: PipelineParams, home: str | Path | None = None) -> PreparedData:
    """Parse, subsample and tokenize the task's train and dev splits."""
    snap = _snapshot(params, home)
    out = prepare(params.data, load_tokenizer(snap), Layout.of(home).data(params.data.task))
    write_json_atomic(out.train_path.parent / "prepared.json",
                      {"digest": out.digest, "base_digest": snap.digest, "train": out.train_size, "dev": out.dev_size})
    return out


def prepared_digest(params: PipelineParams, home: str | Path | None = None) -> str:
    """The data digest recorded by the prepare stage."""
    path = Layout.of(home).data(params.data.task) / "prepared.json"
    if not path.exists():
        raise PeftopsError(f"{path} not found; run `peftops prepare` first")
    return json.loads(path.read_text())["digest"]


def stage_train(params: PipelineParams, method_name: str, home: str | Path | None = None, *,
                progress: bool = True, resume: bool = True, max_steps_this_call: int | None = None,
                on_step: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train one method on the prepared train split; writes the adapter and ``train.json``.
    ``on_step(step, record)`` is called after every optimizer step (live tracking)."""
    layout = Layout.of(home)
    snap = _snapshot(params, home)
    method = get_method(method_name)
    mcfg = make_config(method_name, params.methods.get(method_name))
    split = load_prepared(layout.data(params.data.task) / "train.json")
    pad_id = pad_token_id(snap)  # the split is already tokenized: no tokenizer needed
    device = pick_device()
    precision = resolve_precision(params.train.precision, device)
    base = load_model(snap, device, storage_dtype(precision, method))
    base_params = count_params(base)
    torch.manual_seed(params.train.seed)  # reproducible initialisation (LoRA A, adapters, soft prompts)
    model = method.apply(base, mcfg)
    result = train(model, method, mcfg, split, params.train, layout.run(params.data.task, method_name),
                   pad_id=pad_id, base_params=base_params, device=device, resume=resume,
                   progress=progress, max_steps_this_call=max_steps_this_call, on_step=on_step)
    if result.steps >= params.train.steps:
        summary = result.to_dict()
        summary.pop("trained_names")
        summary.update({"method_config": mcfg.to_dict(), "base_digest": snap.digest,
                        "requested_precision": params.train.precision,
                        "data_digest": split.digest, "trained_parameter_names": result.trained_names})
        write_json_atomic(result.adapter_dir.parent / "train.json", summary)
    return result


def run_precision(params: PipelineParams, run_dir: Path | None, device: torch.device) -> str:
    """The precision a run trained in (its ``train.json``), else ``train.precision`` resolved for
    ``device`` (the base model, or a run trained before precisions were recorded: fp32)."""
    info = Path(run_dir) / "train.json" if run_dir is not None else None
    if info is not None and info.exists():
        return json.loads(info.read_text()).get("precision", "fp32")
    return resolve_precision(params.train.precision, device)


def load_adapted(snap: BaseSnapshot, method_name: str | None, adapter_dir: Path | None,
                 device: torch.device, precision: str = "fp32", read_only: bool = False) -> torch.nn.Module:
    """The base model, with ``adapter_dir`` applied when a method is given, stored for
    ``precision`` (a resolved one): a bf16 PEFT model has its base in bf16 and the trained
    tensors in fp32, as in training; run it under ``peftops.training.precision.autocast``.
    ``read_only``: the caller will only run it forward (``load_model``; the base alone)."""
    method = get_method(method_name) if method_name is not None else None
    model = load_model(snap, device, storage_dtype(precision, method), read_only=read_only and method is None)
    if method is None:
        return model
    if adapter_dir is None or not Path(adapter_dir).exists():
        raise PeftopsError(f"{adapter_dir}: no trained adapter; run `peftops train --method {method_name}` first")
    return keep_activation_dtype(method.load(model, Path(adapter_dir)).to(device), precision)


def stage_evaluate(params: PipelineParams, method_name: str | None, home: str | Path | None = None,
                   adapter_dir: Path | None = None) -> EvalResult:
    """Score the base model (``method_name=None``) or a trained adapter on the dev split."""
    layout = Layout.of(home)
    snap = _snapshot(params, home)
    split = load_prepared(layout.data(params.data.task) / "dev.json")
    # The split is tokenized already: the 262k-entry tokenizer (~3 s to load) only decodes what a
    # generation task's model writes.
    tokenizer = load_tokenizer(snap) if split.generative else None
    device = pick_device()
    name = method_name or "base"
    if method_name and adapter_dir is None:
        adapter_dir = layout.run(params.data.task, method_name) / "adapter"
    precision = run_precision(params, Path(adapter_dir).parent if method_name else None, device)
    model = load_adapted(snap, method_name, adapter_dir, device, precision, read_only=not split.generative)
    # A mergeable adapter's merge certificate needs the adapter-applied logits of the first
    # probe_size dev prompts: with the certificate's batching the evaluation computes them anyway
    # and leaves them for this process's merge (what it saves: ``python bench/merge_bench.py``).
    probes = params.merge.probe_size if (method_name and get_method(method_name).mergeable
                                         and params.train.eval_batch_size == PROBE_BATCH) else 0
    result = evaluate(model, split, pad_id=pad_token_id(snap), batch_size=params.train.eval_batch_size,
                      device=device, precision=precision, tokenizer=tokenizer, probe_rows=probes)
    keep_adapter_logits(result.probe_logits, snap.digest, adapter_dir, split.digest, precision, device)
    out = layout.run(params.data.task, name)
    if split.generative:  # a few (prompt, reference, output) rows, beside eval.json
        write_json_atomic(out / "samples.json", {"columns": ["line", "prompt", "reference", "output"],
                                                 "rows": result.samples, "dev_digest": split.digest})
    write_json_atomic(out / "eval.json", {**result.to_dict(), "dev_digest": split.digest, "base_digest": snap.digest})
    return result


def stage_merge(params: PipelineParams, home: str | Path | None = None, method_name: str = "lora",
                export_dir: Path | None = None, export_dtype: str = "fp32") -> ParityCertificate:
    """Merge the trained adapter and certify parity on the dev prompts, in the run's precision;
    writes ``merge.json``. ``export_dtype`` (fp32 | bf16) is the dtype of the exported weights."""
    layout = Layout.of(home)
    snap = _snapshot(params, home)
    probe = load_prepared(layout.data(params.data.task) / "dev.json")
    run = layout.run(params.data.task, method_name)
    precision = run_precision(params, run, pick_device())
    cert = merge_adapter(snap, run / "adapter", probe, params.merge, export_dir, precision=precision,
                         export_dtype=export_dtype)
    write_json_atomic(run / "merge.json", cert.to_dict())
    return cert


def git_commit() -> str | None:
    """The current commit of the working directory's repository, if any."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape an adapter's numbers."""
    import peft
    import transformers

    import peftops

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "peftops": peftops.__version__}


def stage_publish(params: PipelineParams, home: str | Path | None = None, method_name: str = "lora", *,
                  metrics: dict[str, float] | None = None, lineage: dict[str, Any] | None = None,
                  tags: dict[str, str] | None = None, aliases: list[str] | tuple[str, ...] = ()) -> Any:
    """Publish the trained adapter to the registry against the pinned base."""
    from registry import Registry

    layout = Layout.of(home)
    snap = _snapshot(params, home)
    run = layout.run(params.data.task, method_name)
    adapter = run / "adapter"
    if not adapter.exists():
        raise PeftopsError(f"{adapter}: no trained adapter to publish; run `peftops train` first")
    train_info = json.loads((run / "train.json").read_text())
    lin: dict[str, Any] = {
        "data_digest": prepared_digest(params, home), "git_commit": git_commit(), "method": method_name,
        "hyperparameters": {"method": train_info["method_config"], "train": to_dict(params.train)},
        "precision": train_info.get("precision", "fp32"),
        "libraries": library_versions(),
    }
    if lin["git_commit"] is None:  # not in a git checkout (or no commit yet): say nothing rather than null
        del lin["git_commit"]
    merge_file = run / "merge.json"
    if merge_file.exists():
        lin["merge_parity"] = json.loads(merge_file.read_text())
    lin.update(dvc_lineage(layout.data(params.data.task)))  # DVC's md5 of the data files, when DVC tracks them
    lin.update(lineage or {})
    spec = get_task(params.data.task, params.data.manifest)
    with tempfile.TemporaryDirectory(prefix=".publish-", dir=run) as tmp, \
            Registry.open(**registry_locations(home)) as reg:
        # what is published carries its model card and prompt format (portable_copy)
        folder = portable_copy(adapter, Path(tmp) / "adapter", spec, method_name, snap.name, snap.digest,
                               lin["data_digest"], metrics or {}, lin["precision"])
        reg.register_base(snap.path, digest=snap.digest, name=snap.name)
        return reg.publish(params.data.task, folder, base_digest=snap.digest, method=method_name,
                           metrics=metrics or {}, lineage=lin, tags=tags or {}, aliases=list(aliases))


def registry_locations(home: str | Path | None = None) -> dict[str, str]:
    """The registry's database URL and blob URI: env overrides, else under the state dir."""
    root = state_home(home) / "registry"
    root.mkdir(parents=True, exist_ok=True)
    return {
        "db_url": os.environ.get("PEFTOPS_REGISTRY_DB") or f"sqlite:///{root / 'registry.db'}",
        "blob_uri": os.environ.get("PEFTOPS_REGISTRY_BLOBS") or (root / "blobs").as_uri(),
    }


def stage_measure(params: PipelineParams, method_name: str | None, cfg: "MeasureConfig",
                  home: str | Path | None = None) -> dict[str, Any]:
    """Latency per example and the loss on general text of the base (``method_name=None``) or a
    trained adapter; writes ``measure.json`` beside the run's other outputs."""
    from peftops.evaluation.forgetting import build_general_set
    from peftops.evaluation.measure import measure_model

    layout = Layout.of(home)
    snap = _snapshot(params, home)
    tokenizer = load_tokenizer(snap)
    dev = load_prepared(layout.data(params.data.task) / "dev.json")
    texts = build_general_set(tokenizer, cfg.forgetting, params.data.data_root)
    device = pick_device()
    name = method_name or "base"
    adapter_dir = layout.run(params.data.task, method_name) / "adapter" if method_name else None
    precision = run_precision(params, adapter_dir.parent if adapter_dir else None, device)
    model = load_adapted(snap, method_name, adapter_dir, device, precision)
    rec = measure_model(model, dev, texts, pad_id=tokenizer.pad_token_id, cfg=cfg, device=device,
                        precision=precision)
    del model
    release_memory()
    rec.update({"dev_digest": dev.digest, "base_digest": snap.digest, "device": device.type, "precision": precision,
                "torch_threads": torch.get_num_threads(),
                "general_set": {"digest": texts.digest, "texts": len(texts), "tokens": texts.n_tokens,
                                "source": Path(texts.source).name}})
    write_json_atomic(layout.run(params.data.task, name) / "measure.json", rec)
    return rec
