"""Servability lint: does an adapter fit the pinned base, and will vLLM serve it?

Errors (an adapter that cannot load on the base: unknown modules, wrong shapes, tensors
without partners) refuse the publish. vLLM incompatibilities (DoRA, modules_to_save,
non-LoRA methods, LoRA bias) are recorded as warnings and clear the `vllm_servable` flag,
since such adapters still load in PEFT; `strict=True` refuses them too.
"""

from __future__ import annotations

import re
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .shapes import read_safetensors_header

# Ranks vLLM accepts for --max-lora-rank; an adapter must not exceed the one it is served with.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16

_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<part>A|B)(?:\.[^.]+)?\.weight")
_PEFT_PREFIX = "base_model.model."


@dataclass
class LintReport:
    """Findings of one lint run."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # vLLM incompatibilities
    notes: list[str] = field(default_factory=list)  # serving hints that do not block

    @property
    def vllm_servable(self) -> bool:
        return not self.errors and not self.warnings

    def recorded(self) -> list[str]:
        """What is stored on the version: warnings, then notes."""
        return list(self.warnings) + [f"note: {n}" for n in self.notes]

    def copy(self) -> "LintReport":
        """A report with lists of its own."""
        return LintReport(list(self.errors), list(self.warnings), list(self.notes))


class LintCache:
    """Lint verdicts of adapters already linted, by their exact inputs.

    Whether an adapter fits a base depends only on its config file's bytes, its weights
    file's header bytes and length, and the base: a safetensors header names each tensor with
    its dtype, shape and byte range, no weights, so a fleet's adapters of one method and rank
    have byte-identical headers. What it buys: reading the header and linting it is an eighth
    of a small adapter's publish (``make bench-registry``'s breakdown), paid once per
    structure instead of once per adapter. Bounded (oldest entry out first) and only for
    inputs of at most MAX_KEY_BYTES. A header the reader refuses raises, as without the
    cache, and leaves nothing in it; a report with errors is kept like any other.
    """

    MAX_ENTRIES = 256
    MAX_KEY_BYTES = 64 * 1024

    def __init__(self) -> None:
        self._hits: dict[tuple, LintReport] = {}
        self._lock = threading.Lock()  # a Registry is shared between threads

    def lint(self, weights_path: str, weights: bytes | None, config_bytes: bytes | None,
             config: Mapping[str, Any], base_digest: str,
             base_shapes: Mapping[str, list[int]]) -> LintReport:
        """lint_adapter(config, header of the weights, base_shapes), from the cache when
        these exact bytes were linted against this base before. ``weights`` and
        ``config_bytes`` are the files' bytes as scanned (None: not kept, then no cache)."""
        key = self._key(weights, config_bytes, base_digest)
        if key is not None:
            with self._lock:
                hit = self._hits.get(key)
            if hit is not None:  # a copy: the caller may extend its lists
                return hit.copy()
        report = lint_adapter(config, read_safetensors_header(weights_path, weights),
                              base_shapes)
        if key is not None:
            with self._lock:
                if len(self._hits) >= self.MAX_ENTRIES:
                    del self._hits[next(iter(self._hits))]
                self._hits[key] = report.copy()
        return report

    def _key(self, weights: bytes | None, config_bytes: bytes | None,
             base_digest: str) -> tuple | None:
        if weights is None or config_bytes is None or len(weights) < 8:
            return None
        (n,) = struct.unpack_from("<Q", weights)
        if n + len(config_bytes) > self.MAX_KEY_BYTES or 8 + n > len(weights):
            return None  # large, or not a header the reader would accept: no shortcut
        # The length too: the reader checks that the tensors cover the data exactly.
        return (base_digest, len(weights), weights[8:8 + n], config_bytes)


def _targets(config: Mapping[str, Any], module: str) -> bool:
    """PEFT's own rule: a string is a full-match regex; a list matches names or suffixes."""
    tm = config.get("target_modules")
    if tm is None:
        return False
    if isinstance(tm, str):
        return re.fullmatch(tm, module) is not None
    return any(module == t or module.endswith("." + t) for t in tm)


def _resolve(module: str, base_shapes: Mapping[str, Any]) -> str | None:
    """Find the base module an adapter tensor belongs to (the PEFT wrapper prefix removed)."""
    name = module[len(_PEFT_PREFIX):] if module.startswith(_PEFT_PREFIX) else module
    if name in base_shapes:
        return name
    # Wrappers around the causal-LM body (e.g. a multimodal shell) add prefixes; accept a
    # unique suffix match.
    hits = [b for b in base_shapes if b.endswith("." + name) or name.endswith("." + b)]
    return hits[0] if len(hits) == 1 else None


def lint_adapter(
    config: Mapping[str, Any],
    tensors: Mapping[str, Mapping[str, Any]],
    base_shapes: Mapping[str, list[int]],
) -> LintReport:
    """Check an adapter config and its tensor header against the base's module shape map."""
    rep = LintReport()
    peft_type = str(config.get("peft_type") or "").upper()
    if not peft_type:
        rep.warnings.append("adapter_config.json has no peft_type; vLLM serves LoRA only")
    elif peft_type != "LORA":
        rep.warnings.append(f"peft_type {peft_type} is not LoRA; vLLM serves LoRA only "
                            "(shape checks cover LoRA only)")
    if config.get("use_dora"):
        rep.warnings.append("use_dora=true: vLLM does not serve DoRA adapters")
    if config.get("modules_to_save"):
        rep.warnings.append(f"modules_to_save={config['modules_to_save']}: vLLM does not load "
                            "fully trained extra modules")
    if config.get("lora_bias"):
        rep.warnings.append("lora_bias=true: vLLM does not serve LoRA bias terms")
    if peft_type != "LORA":
        return rep
    _lint_lora(config, tensors, base_shapes, rep)
    return rep


def _lint_lora(config, tensors, base_shapes, rep: LintReport) -> None:
    r = config.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        rep.errors.append(f"r={r!r}: the LoRA rank must be a positive integer")
        return
    rank_pattern = config.get("rank_pattern") or {}
    tm = config.get("target_modules")
    if not tm:
        rep.errors.append("target_modules is empty: the adapter adapts nothing")
        return
    # Every requested target must name something that exists in the base.
    if isinstance(tm, str):
        if not any(re.fullmatch(tm, m) for m in base_shapes):
            rep.errors.append(f"target_modules regex {tm!r} matches no module of the base")
    else:
        for t in tm:
            if not any(m == t or m.endswith("." + t) for m in base_shapes):
                rep.errors.append(f"target module {t!r} does not exist in the base model")

    pairs: dict[str, dict[str, list[int]]] = {}
    for key, info in tensors.items():
        m = _LORA_KEY.fullmatch(key)
        if m is None:
            if "lora_magnitude_vector" in key or "modules_to_save" in key or \
                    config.get("modules_to_save"):
                continue  # DoRA magnitudes and saved modules: flagged above
            rep.errors.append(f"tensor {key!r} is not a LoRA weight (lora_A/lora_B)")
            continue
        pairs.setdefault(m["module"], {})[m["part"]] = list(info["shape"])

    max_rank = r
    adapted: set[str] = set()
    for module, parts in sorted(pairs.items()):
        base = _resolve(module, base_shapes)
        if base is None:
            rep.errors.append(f"{module}: no such module in the base model")
            continue
        adapted.add(base)
        if not _targets(config, base):
            rep.errors.append(f"{base}: has LoRA tensors but target_modules does not select it")
        if set(parts) != {"A", "B"}:
            rep.errors.append(f"{base}: lora_{'B' if 'A' in parts else 'A'} is missing")
            continue
        out_f, in_f = base_shapes[base]
        a, b = parts["A"], parts["B"]
        want_r = next((v for k, v in rank_pattern.items()
                       if base == k or base.endswith("." + k) or re.fullmatch(k, base)), r)
        max_rank = max(max_rank, want_r)
        if len(a) != 2 or len(b) != 2:
            rep.errors.append(f"{base}: LoRA weights must be 2-D, got A{a} B{b}")
            continue
        if a != [want_r, in_f]:
            rep.errors.append(f"{base}: lora_A has shape {a}, expected [{want_r}, {in_f}] "
                              f"(r={want_r}, base in_features={in_f})")
        if b != [out_f, want_r]:
            rep.errors.append(f"{base}: lora_B has shape {b}, expected [{out_f}, {want_r}] "
                              f"(base out_features={out_f}, r={want_r})")
    if not pairs:
        rep.errors.append("adapter_model.safetensors holds no LoRA weights")
    elif config.get("layers_to_transform") is None and not isinstance(tm, str):
        missing = [m for m in base_shapes if _targets(config, m) and m not in adapted
                   and not m.endswith(("embed_tokens", "lm_head"))]
        if missing:
            rep.notes.append(f"{len(missing)} targeted module(s) carry no weights, e.g. "
                             f"{missing[0]}")
    if max_rank > VLLM_MAX_LORA_RANKS[-1]:
        rep.warnings.append(f"rank {max_rank} exceeds vLLM's largest --max-lora-rank "
                            f"({VLLM_MAX_LORA_RANKS[-1]})")
    elif max_rank > VLLM_DEFAULT_MAX_LORA_RANK:
        need = next(x for x in VLLM_MAX_LORA_RANKS if x >= max_rank)
        rep.notes.append(f"rank {max_rank}: serve with vLLM --max-lora-rank {need} or more")
