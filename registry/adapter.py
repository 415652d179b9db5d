"""Reading an adapter folder: its file manifest, canonical config and content id."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import names
from .blobs import hash_file
from .errors import InvalidAdapter, InvalidArgument, InvalidName
from .jsonlimits import MAX_CONFIG_BYTES, loads_bounded

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# Config fields that say where or how an adapter was saved, not what it computes. They
# differ between machines for the same weights (a local path, a hub revision, the train/
# inference flag PEFT flips on save), so they must not change the adapter id. The base is
# pinned by digest separately.
VOLATILE_CONFIG_FIELDS = frozenset({"base_model_name_or_path", "revision", "inference_mode"})

# Files up to this size are read once and their bytes kept for the rest of publish (the
# header check and the blob write), instead of opening the file three times.
KEEP_BYTES = 1 << 20


def canonical_config(config: dict[str, Any]) -> str:
    """JSON of the adapter config with sorted keys and volatile fields removed."""
    kept = {k: v for k, v in config.items() if k not in VOLATILE_CONFIG_FIELDS}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def adapter_id(weights_sha256: str, config: dict[str, Any]) -> str:
    """The content id of an adapter: sha256 over its weights digest and canonical config."""
    payload = weights_sha256 + "\n" + canonical_config(config)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AdapterFolder:
    """A scanned adapter folder: what publish needs before touching any storage."""

    path: Path
    config: dict[str, Any]
    files: dict[str, dict[str, Any]]  # file name -> {"sha256": hex, "size": int}
    adapter_id: str
    # The bytes of the files no larger than KEEP_BYTES, exactly as hashed: what publish
    # lints and stores, so a file rewritten after the scan cannot slip in.
    data: dict[str, bytes] = field(default_factory=dict, repr=False)


def scan_adapter(path: Path) -> AdapterFolder:
    """Hash every file of a PEFT-format adapter folder and compute its id."""
    path = Path(path)
    files: dict[str, dict[str, Any]] = {}
    data: dict[str, bytes] = {}
    # os.scandir, not Path.iterdir: publishing is a hot path and pathlib's per-entry
    # objects cost more than hashing a small adapter's files. Its own error says the folder
    # is missing (no is_dir() first: a stat per publish).
    try:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        raise InvalidAdapter(f"adapter folder {path} does not exist or is not a directory"
                             ) from None
    for entry in entries:
        if entry.is_symlink() or not entry.is_file():
            raise InvalidAdapter(
                f"{entry.path} is not a regular file; an adapter folder holds plain files "
                "only (save one adapter per folder)")
        try:
            names.file_name(entry.name)
        except InvalidName as e:
            raise InvalidAdapter(f"{path}: {e}") from e
        digest, size, content = hash_file(entry.path, KEEP_BYTES)
        files[entry.name] = {"sha256": digest, "size": size}
        if content is not None:
            data[entry.name] = content
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if required not in files:
            raise InvalidAdapter(
                f"{path} has no {required}; save the adapter with PEFT's save_pretrained "
                "(safetensors serialization)")
    if files[CONFIG_FILE]["size"] > MAX_CONFIG_BYTES:
        raise InvalidAdapter(f"{path / CONFIG_FILE} is {files[CONFIG_FILE]['size']:,} bytes; "
                             f"the limit is {MAX_CONFIG_BYTES:,}")
    try:
        raw = data[CONFIG_FILE] if CONFIG_FILE in data else (path / CONFIG_FILE).read_bytes()
        config = loads_bounded(raw.decode("utf-8"), CONFIG_FILE, max_bytes=MAX_CONFIG_BYTES)
    except InvalidArgument as e:
        raise InvalidAdapter(f"{path}: {e}") from None
    except (OSError, ValueError) as e:
        raise InvalidAdapter(f"{path / CONFIG_FILE} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{path / CONFIG_FILE} must hold a JSON object")
    return AdapterFolder(path, config, files, adapter_id(files[WEIGHTS_FILE]["sha256"], config),
                         data)
