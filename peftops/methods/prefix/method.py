"""Prefix tuning through peft.

peft hands the prefix to the model as a key/value cache of ``num_virtual_tokens`` entries per
layer (sized for Gemma 3's grouped-query attention: one KV head of 256 on the 270M model),
prepends ones to the attention mask and offsets the caller's ``position_ids`` by the prefix
length. With the loop's left padding and real-token positions, every text token therefore sees
the same prefix at the same relative distance whatever the padding, and the supervised positions
are still the last columns of the output.

Gemma 3's sliding-window layers mask by sequence index, and the prefix occupies indices
``0..n-1``: a row of width ``w`` keeps the whole prefix in view only while ``n + w`` fits in the
window (512 on Gemma 3 270M). Wider inputs are refused rather than silently losing the prefix.
"""

from __future__ import annotations

from pathlib import Path

import torch

from peftops.errors import PeftopsError
from peftops.methods import register
from peftops.methods.base import write_method_file
from peftops.methods.prefix.config import PrefixConfig


def _window_guard(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    ids = kwargs.get("input_ids", args[0] if args else None)
    window = getattr(module.get_base_model().config, "sliding_window", None)
    if ids is None or not window:
        return
    n = int(module.active_peft_config.num_virtual_tokens)
    if n + ids.shape[1] > window:
        raise PeftopsError(f"prefix: {n} virtual tokens + {ids.shape[1]} input tokens exceed the model's sliding "
                           f"window ({window}); lower methods.prefix.num_virtual_tokens or data.max_length")


def _guarded(peft_model: torch.nn.Module) -> torch.nn.Module:
    peft_model.register_forward_pre_hook(_window_guard, with_kwargs=True)
    return peft_model


@register
class PrefixMethod:
    """Per-layer key/value prefixes; the base model is untouched (not mergeable)."""

    name = "prefix"
    config_cls = PrefixConfig
    mergeable = False

    def apply(self, model: torch.nn.Module, cfg: PrefixConfig) -> torch.nn.Module:
        from peft import PrefixTuningConfig, get_peft_model

        peft_cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens,
                                      prefix_projection=cfg.projection,
                                      encoder_hidden_size=cfg.projection_hidden if cfg.projection else None)
        return _guarded(get_peft_model(model, peft_cfg))

    def save(self, model: torch.nn.Module, cfg: PrefixConfig, out_dir: Path) -> None:
        model.save_pretrained(str(out_dir), safe_serialization=True)
        write_method_file(out_dir, self.name, cfg)

    def load(self, model: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
        from peft import PeftModel

        return _guarded(PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)).eval()

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        raise PeftopsError("prefix: prefixes are extra keys and values, not a weight change; they cannot be merged")
