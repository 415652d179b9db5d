"""The on-disk form shared by the methods that save their own tensors (adapter, BitFit, full):
one safetensors file of tensors by parameter name, an optional ``adapter_config.json`` with a
``peft_type``, and the method record. peft's methods (LoRA, prompt, prefix) use peft's format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from peftops.methods.base import AdapterError, write_method_file

CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def save_tensors(out_dir: Path, name: str, cfg: Any, tensors: dict[str, torch.Tensor],
                 config: dict[str, Any] | None = None, weights: str = ADAPTER_WEIGHTS) -> None:
    """Write ``tensors`` (detached, contiguous, in their own dtype), ``config`` (when given) and the
    method record into ``out_dir``."""
    out_dir = Path(out_dir)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(out_dir / weights),
              metadata={"format": "pt"})
    if config is not None:
        (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_method_file(out_dir, name, cfg)


def open_saved(adapter_dir: Path, peft_type: str | None = None,
               weights: str = ADAPTER_WEIGHTS) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """(config, tensors, weights path) of a saved directory; the config is read (and its
    ``peft_type`` checked) only when ``peft_type`` is given, else it is ``{}``. A missing file or a
    different ``peft_type`` is an ``AdapterError`` naming the file."""
    adapter_dir = Path(adapter_dir)
    cfg_path, weights_path = adapter_dir / CONFIG_FILE, adapter_dir / weights
    for f in ((cfg_path, weights_path) if peft_type else (weights_path,)):
        if not f.exists():
            raise AdapterError(f"{f}: missing from the adapter directory")
    config: dict[str, Any] = {}
    if peft_type:
        config = json.loads(cfg_path.read_text())
        if config.get("peft_type") != peft_type:
            raise AdapterError(f"{cfg_path}: peft_type is {config.get('peft_type')!r}, expected {peft_type!r}")
    return config, load_file(str(weights_path)), weights_path
