"""Merge an adapter into the base weights and certify that nothing changed.

A parity certificate compares the adapter-applied model with the merged one on a fixed probe
set: the largest absolute difference of any logit at the last prompt position and the mean
KL divergence between their next-token distributions. Above tolerance, merging is refused. For a generation task the certificate also requires that
the greedy outputs (``peftops.evaluation.generate``, the task's ``max_new_tokens`` and stop
tokens) of the adapter-applied and the merged model on the probe prompts are identical, token for
token (``greedy_identical``; the first probe that differs is named otherwise).

With an export directory the check is made twice: on the merged model in memory, and on the
exported files reloaded with ``transformers.AutoModelForCausalLM.from_pretrained`` as a plain
Gemma 3, which is what a deployment loads. Anything the export cannot hold (for example a
bias that the architecture has no slot for) shows up there, and the export is removed.

Precision. The certificate is made in the run's precision and says which. The merged weights
are always folded in fp32, so a bf16 run's merge loses nothing to the fold itself: the weights
the merge writes into get their fp32 values from the snapshot and the fold is rounded to bf16
once (``_fold_in_fp32``; where a method cannot name those weights, or for an fp32 export, the
adapter is applied to the whole fp32 base instead; the values are the same, bit for bit). For bf16, parity compares the adapter-applied model as
the run computes it (bf16 base, fp32 adapter tensors, products under autocast) with the merged
weights rounded to bf16 under the same autocast: what a bf16 deployment of the merge computes.
Two bf16 models that round at different places (``W x + B A x`` against ``(W + B A) x``) differ
by rounding, not by the merge, so bf16 has its own tolerance (``tolerance_for``). The export is
fp32 safetensors unless ``export_dtype="bf16"``; its reloaded check runs in the run's precision.

The adapter-applied side. An evaluation of a mergeable adapter in the same process batches the
first ``probe_size`` dev prompts as the certificate does and leaves their logits here
(``keep_adapter_logits``, keyed by ``_probe_key``: base, adapter contents, probes, batching,
precision, device, threads); the merge takes them instead of computing them again, and the
certificate says so (``adapter_logits_from``). The merged side is always computed here.
"""

from __future__ import annotations

import copy
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from peftops.model.snapshot import (BaseSnapshot, load_base_tensors, load_model, load_tokenizer, pad_token_id,
                                    write_snapshot)
from peftops.training.batching import in_row_order, prompt_last_logits, shortest_first
from peftops.evaluation.generate import generate_all
from peftops.config import MergeConfig
from peftops.data.prepared import PreparedSplit
from peftops.errors import ParityError, PeftopsError, SnapshotError
from peftops.digest import combine, file_sha256
from peftops.fsutil import write_json_atomic
from peftops.methods import get_method, read_method_file
from peftops.training.kernels import fuse_rms_norms
from peftops.training.precision import autocast, dtype_of, keep_activation_dtype, place_parameters, storage_dtype

# Max |Δlogit| allowed between a bf16 adapter-applied model and its bf16-rounded merge. bf16 keeps
# 8 significant bits: one rounding step is 2**-8 (0.4 %) relative, 0.06 on a logit of 16, and the
# two models round at different places in each of 18 layers. Measured on Gemma 3 270M, 32 SST-2-
# shaped prompts, an r=16 LoRA on all linear layers (``python bench/merge_bf16_probe.py``): max
# |Δlogit| 0.41 (mean KL 2.0e-3) between the bf16 adapter-applied model and its merge, while the
# bf16 base itself differs from the fp32 base by 0.39 (mean KL 1.1e-3; largest |logit| 20.8). The
# merge adds about bf16's own rounding and no more; 1.0 leaves ~2.5x that. A bf16 run's tolerance is
# ``merge.tolerance`` (for fp32 runs; default 1e-3, measured 2.4e-5 on the same probe) times
# BF16_TOLERANCE_FACTOR: 1.0 at the default, and a stricter ``merge.tolerance`` is stricter in both.
BF16_TOLERANCE_FACTOR = 1000.0


def tolerance_for(precision: str, fp32_tolerance: float) -> float:
    """The max |Δlogit| a merge certificate allows in ``precision``, from ``merge.tolerance``."""
    return fp32_tolerance * BF16_TOLERANCE_FACTOR if precision == "bf16" else fp32_tolerance


# The certificate's batch size. An evaluation with the same one can hand its probe logits over.
PROBE_BATCH = 16
# The adapter-applied model's probe logits that an evaluation in this process computed, by
# ``_probe_key``; taken (and dropped) by the merge. A few entries: each is probe_size x 262k fp32.
_ADAPTER_LOGITS: OrderedDict[str, torch.Tensor] = OrderedDict()
_ADAPTER_LOGITS_KEPT = 2
_ADAPTER_LOGITS_LOCK = threading.Lock()  # the local runner's tasks are threads of one process


def _probe_key(base_digest: str, adapter_dir: Path, probe_digest: str, n_probes: int, precision: str,
               device: torch.device) -> str:
    """What the adapter-applied probe logits are a function of: the base, the adapter's files
    (their contents), the probe split and count, the certificate's batching, the precision, the
    device and the thread count."""
    adapter_dir = Path(adapter_dir)
    files = {p.name: file_sha256(p) for p in sorted(adapter_dir.iterdir()) if p.is_file()}
    return combine({"base": base_digest, "adapter": combine(files), "probe": probe_digest, "n": str(n_probes),
                    "batch": str(PROBE_BATCH), "precision": precision, "device": str(device),
                    "threads": str(torch.get_num_threads())})


def keep_adapter_logits(logits: torch.Tensor | None, base_digest: str, adapter_dir: Path, probe_digest: str,
                        precision: str, device: torch.device) -> None:
    """Hold an evaluation's probe logits (``EvalResult.probe_logits``; None: nothing to hold) of
    ``adapter_dir`` for this process's merge."""
    if logits is None:
        return
    key = _probe_key(base_digest, adapter_dir, probe_digest, len(logits), precision, device)
    with _ADAPTER_LOGITS_LOCK:
        _ADAPTER_LOGITS[key] = logits
        while len(_ADAPTER_LOGITS) > _ADAPTER_LOGITS_KEPT:
            _ADAPTER_LOGITS.popitem(last=False)


def _take_adapter_logits(*key_args: Any) -> torch.Tensor | None:
    if not _ADAPTER_LOGITS:  # nothing held: no need to hash the adapter's files for a key
        return None
    key = _probe_key(*key_args)
    with _ADAPTER_LOGITS_LOCK:
        return _ADAPTER_LOGITS.pop(key, None)


@dataclass
class ParityCertificate:
    """How closely a merged model reproduces the adapter-applied one."""

    max_abs_dlogit: float
    mean_kl: float
    n_probes: int
    tolerance: float
    passed: bool
    probe_digest: str
    method: str
    merge_time_s: float = 0.0
    export_dir: str | None = None
    export_max_abs_dlogit: float | None = None  # the reloaded export vs the adapter-applied model
    export_mean_kl: float | None = None
    base_digest: str = ""
    precision: str = "fp32"  # the run's, in which both sides of the comparison were computed
    export_dtype: str | None = None  # the exported weights' dtype, when exported
    greedy_identical: bool | None = None  # generation: merged and adapter-applied greedy outputs equal
    greedy_probes: int = 0
    greedy_first_difference: int | None = None  # index of the first probe whose outputs differ
    # where the adapter-applied side's logits were computed: "merge", or "evaluation" (the same
    # model, batches and precision, in the evaluation stage of this process: ``_probe_key``)
    adapter_logits_from: str = "merge"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def last_logits(model: torch.nn.Module, prompts: list[list[int]], pad_id: int, batch_size: int = PROBE_BATCH,
                precision: str = "fp32") -> torch.Tensor:
    """(N, V) logits at each prompt's last position, computed in ``precision``, returned in fp32,
    in the prompts' order.

    The prompts are batched shortest first (``shortest_first``): each batch is padded to its
    longest row, and on mixed lengths padding is most of the certificate's cost (RTE's 64 probes:
    10,992 padded tokens in dev order, 6,720 sorted; ``python bench/merge_bench.py``). Both sides
    of a comparison get the same batches.
    """
    device = next(model.parameters()).device
    batches = shortest_first([len(p) for p in prompts], batch_size)
    out = []
    with autocast(device, precision):
        for rows in batches:
            out.append(prompt_last_logits(model, [prompts[i] for i in rows], pad_id, device).float().cpu())
    return in_row_order(out, batches)


def _greedy(model: torch.nn.Module, probe: PreparedSplit, prompts: list[list[int]], pad: int,
            precision: str) -> list[list[int]]:
    device = next(model.parameters()).device
    with autocast(device, precision):
        return generate_all(model, prompts, pad_id=pad, stop_ids=probe.stop_ids, max_new_tokens=probe.max_new_tokens,
                            batch_size=16, device=device).ids


def _first_difference(a: list[list[int]], b: list[list[int]]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def compare_logits(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max |a-b|, mean KL(softmax a || softmax b)), the KL in float64 (rounding can leave it at -1e-9)."""
    max_abs = float((a - b).abs().max())
    la, lb = torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1)
    kl = float((la.exp() * (la - lb)).sum(-1).mean())
    return max_abs, max(kl, 0.0)


def merge_adapter(snapshot: BaseSnapshot, adapter_dir: Path, probe: PreparedSplit, cfg: MergeConfig,
                  export_dir: Path | None = None, *, precision: str = "fp32",
                  export_dtype: str = "fp32") -> ParityCertificate:
    """Fold ``adapter_dir`` into the base (in fp32), certify parity in ``precision`` (fp32 | bf16,
    the run's), optionally export the merged model with ``export_dtype`` (fp32 | bf16) weights.

    Raises ``ParityError`` above the precision's tolerance (nothing is exported then).
    """
    if export_dtype not in ("fp32", "bf16"):
        raise PeftopsError(f"export dtype {export_dtype!r} is not one of fp32, bf16")
    record = read_method_file(adapter_dir)
    method = get_method(record["method"])
    if not method.mergeable:
        raise PeftopsError(f"{adapter_dir}: method {method.name!r} cannot be merged into the base weights")
    prompts = probe.input_ids[: cfg.probe_size]
    pad = pad_token_id(snapshot)  # the probes are tokenized: no tokenizer to load
    tolerance = tolerance_for(precision, cfg.tolerance)
    t0 = time.perf_counter()
    adapted = method.load(load_model(snapshot, dtype=storage_dtype(precision, method)), Path(adapter_dir))
    fuse_rms_norms(adapted)  # as in training and evaluation; the merged model below inherits it or gets it
    keep_activation_dtype(adapted, precision)
    device = next(adapted.parameters()).device
    before = _take_adapter_logits(snapshot.digest, adapter_dir, probe.digest, len(prompts), precision, device)
    logits_from = "merge" if before is None else "evaluation"
    if before is None:
        before = last_logits(adapted, prompts, pad, precision=precision)
    greedy_before = _greedy(adapted, probe, prompts, pad, precision) if probe.generative else None
    low = dtype_of(precision)
    # ``served``: the merged model as the run's precision stores it (bf16: the fp32 fold's
    # parameters rounded once; buffers such as RoPE's frequencies stay as loaded, as in a bf16
    # from_pretrained). ``merged``: the fp32 fold, where one is built (an fp32 export needs it).
    if storage_dtype(precision, method) == torch.float32:
        merged = method.merge(adapted)  # the adapter-applied model is fp32: fold it in place
        served = merged if low == torch.float32 else _rounded(merged)
    else:  # a bf16 base: fold in place unless an fp32 export needs the whole fp32 fold
        merged = None
        served = _fold_in_fp32(method, adapted, snapshot) if export_dir is None or export_dtype == "bf16" else None
        if served is None:
            del adapted
            merged = method.merge(method.load(load_model(snapshot), Path(adapter_dir)))  # folded in fp32
            served = _rounded(merged)
    fuse_rms_norms(served)
    after = last_logits(served, prompts, pad, precision=precision)
    max_abs, kl = compare_logits(before, after)
    cert = ParityCertificate(
        max_abs_dlogit=max_abs, mean_kl=kl, n_probes=len(prompts), tolerance=tolerance,
        passed=max_abs <= tolerance, probe_digest=probe.digest, method=method.name,
        merge_time_s=time.perf_counter() - t0, base_digest=snapshot.digest, precision=precision,
        adapter_logits_from=logits_from,
    )
    if not cert.passed:
        raise ParityError(f"{adapter_dir}: merged model differs from the adapter by max |Δlogit| = "
                          f"{max_abs:.3g} > tolerance {tolerance:g} ({precision}) on {len(prompts)} probes; "
                          "not merging")
    if greedy_before is not None:
        diff = _first_difference(greedy_before, _greedy(served, probe, prompts, pad, precision))
        cert.greedy_identical, cert.greedy_probes, cert.greedy_first_difference = diff is None, len(prompts), diff
        if diff is not None:
            cert.passed = False
            raise ParityError(f"{adapter_dir}: the merged model's greedy output differs from the adapter's on "
                              f"probe {diff} (dev line {probe.lines[diff]}) of {len(prompts)} ({precision}); "
                              "not merging")
    if export_dir is not None:
        export_dir = Path(export_dir)
        out = merged if export_dtype == "fp32" else (served if low == torch.bfloat16 else _rounded(merged))
        out.config.architectures = [type(out).__name__]  # what serving stacks (vLLM) dispatch on
        write_snapshot(out, load_tokenizer(snapshot), export_dir, f"{snapshot.name}+{Path(adapter_dir).name}")
        del merged, served, out
        reloaded = load_plain(export_dir, storage_dtype(precision))
        fuse_rms_norms(reloaded)
        exp_abs, exp_kl = compare_logits(before, last_logits(reloaded, prompts, pad, precision=precision))
        cert.export_max_abs_dlogit, cert.export_mean_kl = exp_abs, exp_kl
        if greedy_before is not None and _first_difference(greedy_before, _greedy(reloaded, probe, prompts, pad,
                                                                                  precision)) is not None:
            exp_abs = float("inf")  # refused below, as a logit mismatch is
            cert.greedy_identical = False
        cert.export_dtype = export_dtype
        cert.merge_time_s = time.perf_counter() - t0
        if exp_abs > tolerance:
            shutil.rmtree(export_dir, ignore_errors=True)
            cert.passed = False
            raise ParityError(f"{adapter_dir}: the exported model, reloaded as a plain {snapshot.name}, differs "
                              f"from the adapter by max |Δlogit| = {exp_abs:.3g} > tolerance {tolerance:g} "
                              f"({precision}) on {len(prompts)} probes (the architecture cannot hold part of "
                              f"the {method.name} update); export removed")
        cert.export_dir = str(export_dir)
        write_json_atomic(export_dir / "parity.json", cert.to_dict())
    return cert


def _fold_in_fp32(method: Any, model: torch.nn.Module, snapshot: BaseSnapshot) -> torch.nn.Module | None:
    """The bf16 merge of the bf16 adapter-applied ``model``, folded in fp32, in place; None where the
    method cannot say what its merge writes into (then the fp32 base is loaded instead).

    The base parameters the merge adds into (``fold_targets``) first get their fp32 values from
    the snapshot, so each merged weight is round(W + ΔW) with W and ΔW in fp32, the value a fold
    into the fp32 base rounded once gives; every other parameter already is the base's bf16
    rounding. What it saves against building the fp32 base, folding and copying it to bf16: one
    fp32 model (1 GB; a warm worker kept it between tasks) and a model copy (``python
    bench/merge_bench.py``)."""
    fold_targets = getattr(method, "fold_targets", None)
    if fold_targets is None:
        return None
    targets = fold_targets(model)
    try:
        fp32 = load_base_tensors(snapshot, list(targets))
    except SnapshotError:  # e.g. a weight the file holds under its tied name: take the full path
        return None
    with torch.no_grad():
        for key, tensor in fp32.items():
            targets[key].data = tensor.to(targets[key].device)
    return place_parameters(method.merge(model), "bf16")


def _rounded(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the (frozen) ``model`` with its parameters in bf16."""
    return place_parameters(copy.deepcopy(model), "bf16")


def load_plain(path: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """An exported model loaded the way a deployment would: ``AutoModelForCausalLM`` in ``dtype``
    (fp32 by default), no peftops code."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    model.eval()
    return model
