"""Full fine-tuning: all weights train; the 'adapter' is the whole model as safetensors."""

from __future__ import annotations

from pathlib import Path

import torch

from peftops.methods import register
from peftops.methods.base import AdapterError
from peftops.methods.full.config import FullConfig
from peftops.methods.saved import open_saved, save_tensors

WEIGHTS = "model.safetensors"


def state_without_tied(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with the tied LM head left out (it is the input embedding)."""
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}


@register
class FullMethod:
    """Every parameter trains. Stored as a complete copy: what PEFT exists to avoid."""

    name = "full"
    config_cls = FullConfig
    mergeable = False
    # Every weight trains: a bf16 run keeps them in fp32 (master weights) and only computes in bf16.
    trains_base = True

    def apply(self, model: torch.nn.Module, cfg: FullConfig) -> torch.nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def save(self, model: torch.nn.Module, cfg: FullConfig, out_dir: Path) -> None:
        save_tensors(out_dir, self.name, cfg, state_without_tied(model), weights=WEIGHTS)

    def load(self, model: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
        _, state, path = open_saved(adapter_dir, weights=WEIGHTS)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatch
            raise AdapterError(f"{path}: does not fit the model ({str(err).splitlines()[-1].strip()})") from None
        # Only the tied head may be absent from the file.
        if unexpected or not set(missing) <= {"lm_head.weight"}:
            raise AdapterError(f"{path}: not a full copy of this model (unexpected {sorted(unexpected)[:3]}, "
                               f"missing {sorted(set(missing) - {'lm_head.weight'})[:3]})")
        if getattr(model.config, "tie_word_embeddings", False):
            model.tie_weights()
        return model

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        return model
