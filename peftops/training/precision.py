"""Numeric precision of a run: ``fp32`` or ``bf16``, and ``auto`` to pick one from the hardware.

bf16 means: the frozen base stored in bf16, trainable parameters and the optimizer state in fp32,
every matrix product in bf16 (``torch.autocast``, whose device type is the model's device), the
loss reduced in fp32. Full fine-tuning trains every weight, so nothing is frozen: it keeps fp32
master weights and computes in bf16 under the same autocast.

``auto`` picks bf16 where the hardware multiplies bf16 natively: a CUDA device that supports it,
or a CPU with AMX-BF16 or AVX512-BF16 (oneDNN uses them by itself). Elsewhere it picks fp32 and
says so once: bf16 arithmetic emulated in fp32 units is slower than fp32 itself.

Autocast rather than explicit casts: on a 2-core AMD EPYC with AVX512-BF16, one LoRA forward +
backward on a 4-layer body of Gemma 3 270M's widths took 419 ms in fp32, 195 ms under autocast
(191 ms with peft's fp32 copy of LoRA's input) and 227 ms with the base in bf16 and no autocast,
where peft then runs the LoRA path in fp32 (``python bench/precision_probe.py``, one run, median
of 8 steps). Autocast also covers every method alike (adapters, BitFit's biases, soft prompts)
without a cast in each. CUDA takes the same path (autocast with the device's type); it is not
measured here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
_SAID: set[str] = set()


@functools.lru_cache(maxsize=1)
def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The CPU's native bf16 features (``amx_bf16``, ``avx512_bf16``) named in its flags; () if none
    or unreadable (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return ()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
            break
    return tuple(f for f in CPU_BF16_FLAGS if f in flags)


def bf16_native(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware (the one capability test ``auto`` uses)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_bf16_flags())
    return False


def _say_once(key: str, message: str) -> None:
    if key not in _SAID:
        _SAID.add(key)
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def resolve_precision(requested: str, device: str | torch.device = "cpu") -> Precision:
    """``auto`` -> bf16 where :func:`bf16_native`, else fp32 (said once); ``fp32``/``bf16`` as asked.

    An explicit ``bf16`` is honoured without native support (torch emulates it; slower, said once).
    """
    device = torch.device(device)
    if requested == "fp32":
        return "fp32"
    native = bf16_native(device)
    if requested == "auto":
        if native:
            return "bf16"
        _say_once(f"auto-{device.type}", f"train.precision=auto: {device.type} has no native bf16 "
                  f"(CPU flags {', '.join(CPU_BF16_FLAGS)} or a bf16 CUDA device); using fp32")
        return "fp32"
    if requested == "bf16":
        if not native:
            _say_once(f"bf16-{device.type}", f"train.precision=bf16 on a {device.type} without native bf16: "
                      "emulated, expect it slower than fp32")
        return "bf16"
    raise ValueError(f"precision {requested!r} is not one of auto, fp32, bf16")


def dtype_of(precision: str) -> torch.dtype:
    """The compute dtype: bfloat16 for ``bf16``, float32 otherwise."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def storage_dtype(precision: str, method: Any = None) -> torch.dtype:
    """The dtype to load the base in: bf16 for a bf16 PEFT run; fp32 for fp32 and for methods that
    train the base (``trains_base``: FFT keeps fp32 master weights)."""
    if precision == "bf16" and not getattr(method, "trains_base", False):
        return torch.bfloat16
    return torch.float32


def autocast(device: str | torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device``'s type for ``bf16``; a no-op context for fp32."""
    device = torch.device(device)
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def place_parameters(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Frozen floating parameters to the compute dtype, trainable ones to fp32 (idempotent); then
    :func:`keep_activation_dtype`."""
    low = dtype_of(precision)
    with torch.no_grad():
        for p in model.parameters():
            if not p.is_floating_point():
                continue
            want = torch.float32 if p.requires_grad else low
            if p.dtype != want:
                p.data = p.data.to(want)
    return keep_activation_dtype(model, precision)


def keep_activation_dtype(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """For bf16, let peft's LoRA layers keep their input in bf16: by default they copy it to the
    fp32 dtype of ``lora_A`` first, and autocast casts it back for the product. The dropout and
    the low-rank products then read the bf16 activations; the values are the same."""
    for module in model.modules():
        if hasattr(module, "_cast_input_dtype"):
            module.cast_input_dtype_enabled = precision != "bf16"
    return model


def model_precision(model: torch.nn.Module) -> Precision:
    """The precision a model is stored for: bf16 when any of its parameters is bf16 (a bf16 run's
    frozen base), else fp32. What evaluation uses when it is not told."""
    return "bf16" if any(p.dtype == torch.bfloat16 for p in model.parameters()) else "fp32"


def parameter_dtypes(model: torch.nn.Module) -> dict[str, set[str]]:
    """``{"trainable": {...}, "frozen": {...}}`` dtype names, for records and tests."""
    out: dict[str, set[str]] = {"trainable": set(), "frozen": set()}
    for p in model.parameters():
        out["trainable" if p.requires_grad else "frozen"].add(str(p.dtype).removeprefix("torch."))
    return out

