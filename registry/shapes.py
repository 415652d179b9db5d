"""Cheap reading of safetensors headers and base-model module shape maps.

A safetensors file starts with an 8-byte little-endian header length and a JSON header that
names every tensor with its dtype and shape, so shapes are known without loading weights
(and without importing torch).
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import InvalidAdapter

# A header larger than this is not a safetensors file we should trust (the format caps it
# at 100 MB too).
_MAX_HEADER = 100 * 1024 * 1024


# Bits per element of each safetensors dtype.
DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
              "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
              "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}


def _bad(path: Path, why: str) -> InvalidAdapter:
    return InvalidAdapter(f"{path} is not a loadable safetensors file: {why}")


def _is_int(x: Any) -> bool:
    # JSON decodes numbers to exactly int or float (True is a bool, not an int, here).
    return type(x) is int


def read_safetensors_header(path: str | Path, data: bytes | None = None
                            ) -> dict[str, dict[str, Any]]:
    """Return {tensor_name: {"dtype": str, "shape": [int, ...]}} from a safetensors file
    (or from ``data``, the file's bytes already read; ``path`` then only names it).

    The header is checked against the file as a loader would: every dtype known, every
    shape a list of non-negative integers, each tensor's byte range the size its dtype and
    shape say, the ranges contiguous and covering the data exactly. Anything else raises
    InvalidAdapter with one line saying what is wrong.
    """
    try:
        with (io.BytesIO(data) if data is not None else open(path, "rb")) as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise _bad(path, "shorter than 8 bytes")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER:
                raise _bad(path, f"header of {n} bytes")
            body = f.read(n)
            if len(body) != n:
                raise _bad(path, f"the header says {n} bytes, the file has {len(body)} after "
                           "the length")
            size = len(data) if data is not None else os.fstat(f.fileno()).st_size
            header = json.loads(body)
    except RecursionError:
        raise _bad(path, "the header is nested too deeply") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise InvalidAdapter(f"cannot read safetensors header of {path}: {e}") from e
    if not isinstance(header, dict):
        raise _bad(path, "the header is not a JSON object")
    out: dict[str, dict[str, Any]] = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not isinstance(info.get("shape"), list):
            raise InvalidAdapter(f"{path}: tensor {name!r} has no shape in the header")
        shape, dtype, offsets = info["shape"], info.get("dtype"), info.get("data_offsets")
        if not all(type(d) is int and d >= 0 for d in shape):  # _is_int, inlined
            raise _bad(path, f"tensor {name!r} has shape {shape!r}; dimensions must be "
                       "non-negative integers")
        if dtype not in DTYPE_BITS:
            raise _bad(path, f"tensor {name!r} has unknown dtype {dtype!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))
                and 0 <= offsets[0] <= offsets[1]):
            raise _bad(path, f"tensor {name!r} has data_offsets {offsets!r}; expected "
                       "[begin, end] integers")
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        if bits != 8 * (offsets[1] - offsets[0]):
            raise _bad(path, f"tensor {name!r} is {dtype} {shape} ({bits / 8:g} bytes) but "
                       f"its data_offsets span {offsets[1] - offsets[0]} bytes")
        spans.append((offsets[0], offsets[1], name))
        out[name] = {"dtype": dtype, "shape": list(shape)}
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise _bad(path, f"tensor {name!r} starts at byte {begin} of the data, expected "
                       f"{end} (the data must be contiguous)")
        end = stop
    if end != size - 8 - n:
        raise _bad(path, f"the tensors cover {end} bytes of data but the file holds "
                   f"{size - 8 - n} after the header")
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
