"""Cheap reading of safetensors headers and base-model module shape maps.

A safetensors file starts with an 8-byte little-endian header length and a JSON header that
names every tensor with its dtype and shape, so shapes are known without loading weights
(and without importing torch).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import InvalidAdapter

# A header larger than this is not a safetensors file we should trust (the format caps it
# at 100 MB too).
_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors_header(path: str | Path, data: bytes | None = None
                            ) -> dict[str, dict[str, Any]]:
    """Return {tensor_name: {"dtype": str, "shape": [int, ...]}} from a safetensors file
    (or from ``data``, the file's bytes already read; ``path`` then only names it)."""
    path = Path(path)
    try:
        with (io.BytesIO(data) if data is not None else path.open("rb")) as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise InvalidAdapter(f"{path} is not a safetensors file: shorter than 8 bytes")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER:
                raise InvalidAdapter(f"{path} is not a safetensors file: header of {n} bytes")
            body = f.read(n)
            if len(body) != n:
                raise InvalidAdapter(f"{path} is not a safetensors file: the header says {n} "
                                     f"bytes, the file has {len(body)} after the length")
            header = json.loads(body)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise InvalidAdapter(f"cannot read safetensors header of {path}: {e}") from e
    if not isinstance(header, dict):
        raise InvalidAdapter(f"{path} is not a safetensors file: header is not an object")
    out: dict[str, dict[str, Any]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not isinstance(info.get("shape"), list):
            raise InvalidAdapter(f"{path}: tensor {name!r} has no shape in the header")
        out[name] = {"dtype": info.get("dtype"), "shape": [int(d) for d in info["shape"]]}
    return out


def module_shapes_from_state_dict(
    state_dict_or_path: Mapping[str, Any] | str | Path,
) -> dict[str, list[int]]:
    """Map each 2-D weight's module to its shape: {"model.layers.0.mlp.up_proj": [out, in]}.

    Accepts a state dict (values with a `.shape`), a safetensors file, or a snapshot
    directory whose *.safetensors files are all read (sharded checkpoints included). Only
    headers are read. Linear layers are stored [out_features, in_features], which is what
    LoRA shapes are checked against; embeddings ([vocab, hidden]) are kept too.
    """
    shapes: dict[str, list[int]] = {}
    if isinstance(state_dict_or_path, Mapping):
        items = ((k, list(getattr(v, "shape", ()))) for k, v in state_dict_or_path.items())
    else:
        p = Path(state_dict_or_path)
        files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
        if not files:
            raise InvalidAdapter(f"no *.safetensors files in {p}")
        items = ((k, v["shape"]) for f in files for k, v in read_safetensors_header(f).items())
    for name, shape in items:
        if name.endswith(".weight") and len(shape) == 2:
            shapes[name[: -len(".weight")]] = [int(shape[0]), int(shape[1])]
    return shapes
