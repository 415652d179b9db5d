"""Merge an adapter into the base weights and certify that nothing changed.

A parity certificate compares the adapter-applied model with the merged one on a fixed probe
set: the largest absolute difference of any logit at the last prompt position and the mean
KL divergence between their next-token distributions. Above tolerance, merging is refused.

With an export directory the check is made twice: on the merged model in memory, and on the
exported files reloaded with ``transformers.AutoModelForCausalLM.from_pretrained`` as a plain
Gemma 3, which is what a deployment loads. Anything the export cannot hold (for example a
bias that the architecture has no slot for) shows up there, and the export is removed.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from peftops.model.snapshot import BaseSnapshot, load_model, load_tokenizer, write_snapshot
from peftops.training.batching import build_batch, forward_logits
from peftops.config import MergeConfig
from peftops.data.prepared import PreparedSplit
from peftops.errors import ParityError, PeftopsError
from peftops.fsutil import write_json_atomic
from peftops.methods import get_method, read_method_file


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def last_logits(model: torch.nn.Module, prompts: list[list[int]], pad_id: int, batch_size: int = 16) -> torch.Tensor:
    """(N, V) fp32 logits at each prompt's last position."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        batch = build_batch(chunk, [[0]] * len(chunk), pad_id).to(device)
        out.append(forward_logits(model, batch)[:, -1, :].float().cpu())
    return torch.cat(out)


def compare_logits(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max |a-b|, mean KL(softmax a || softmax b)), the KL in float64 (rounding can leave it at -1e-9)."""
    max_abs = float((a - b).abs().max())
    la, lb = torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1)
    kl = float((la.exp() * (la - lb)).sum(-1).mean())
    return max_abs, max(kl, 0.0)


def merge_adapter(snapshot: BaseSnapshot, adapter_dir: Path, probe: PreparedSplit, cfg: MergeConfig,
                  export_dir: Path | None = None) -> ParityCertificate:
    """Fold ``adapter_dir`` into the base, certify parity, optionally export the merged model.

    Raises ``ParityError`` above ``cfg.tolerance`` (nothing is exported then).
    """
    record = read_method_file(adapter_dir)
    method = get_method(record["method"])
    if not method.mergeable:
        raise PeftopsError(f"{adapter_dir}: method {method.name!r} cannot be merged into the base weights")
    tokenizer = load_tokenizer(snapshot)
    prompts = probe.input_ids[: cfg.probe_size]
    t0 = time.perf_counter()
    adapted = method.load(load_model(snapshot), Path(adapter_dir))
    before = last_logits(adapted, prompts, tokenizer.pad_token_id)
    merged = method.merge(adapted)
    after = last_logits(merged, prompts, tokenizer.pad_token_id)
    max_abs, kl = compare_logits(before, after)
    cert = ParityCertificate(
        max_abs_dlogit=max_abs, mean_kl=kl, n_probes=len(prompts), tolerance=cfg.tolerance,
        passed=max_abs <= cfg.tolerance, probe_digest=probe.digest, method=method.name,
        merge_time_s=time.perf_counter() - t0, base_digest=snapshot.digest,
    )
    if not cert.passed:
        raise ParityError(f"{adapter_dir}: merged model differs from the adapter by max |Δlogit| = "
                          f"{max_abs:.3g} > tolerance {cfg.tolerance:g} on {len(prompts)} probes; not merging")
    if export_dir is not None:
        export_dir = Path(export_dir)
        merged.config.architectures = [type(merged).__name__]  # what serving stacks (vLLM) dispatch on
        write_snapshot(merged, tokenizer, export_dir, f"{snapshot.name}+{Path(adapter_dir).name}")
        del merged, adapted
        exp_abs, exp_kl = compare_logits(before, last_logits(load_plain(export_dir), prompts, tokenizer.pad_token_id))
        cert.export_max_abs_dlogit, cert.export_mean_kl = exp_abs, exp_kl
        cert.merge_time_s = time.perf_counter() - t0
        if exp_abs > cfg.tolerance:
            shutil.rmtree(export_dir, ignore_errors=True)
            cert.passed = False
            raise ParityError(f"{adapter_dir}: the exported model, reloaded as a plain {snapshot.name}, differs "
                              f"from the adapter by max |Δlogit| = {exp_abs:.3g} > tolerance {cfg.tolerance:g} "
                              f"on {len(prompts)} probes (the architecture cannot hold part of the "
                              f"{method.name} update); export removed")
        cert.export_dir = str(export_dir)
        write_json_atomic(export_dir / "parity.json", cert.to_dict())
    return cert


def load_plain(path: Path) -> torch.nn.Module:
    """An exported model loaded the way a deployment would: ``AutoModelForCausalLM``, fp32, no peftops code."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
    return model
