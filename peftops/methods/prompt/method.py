"""Prompt tuning through peft, with the virtual tokens placed right after the left padding.

peft prepends the virtual tokens to the padded row and drops ``position_ids``, so in a
left-padded batch the pads would sit between the soft prompt and the text, and every real
token's position would shift with the amount of padding: a row's output would depend on its
batch. ``PromptTuned`` keeps peft's parameters, save format and loader, but lays each row out as
``[pads][virtual tokens][text]`` with positions counted over real tokens only, so a padded row
computes exactly what it computes alone, and the supervised positions stay the last columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from peftops.errors import PeftopsError
from peftops.methods import register
from peftops.methods.base import write_method_file
from peftops.methods.prompt.config import PromptConfig


def _n_virtual(peft_model: Any) -> int:
    return int(peft_model.active_peft_config.num_virtual_tokens)


class PromptTuned(torch.nn.Module):
    """A peft prompt-tuning model whose forward is padding-invariant (see the module docstring)."""

    def __init__(self, peft_model: torch.nn.Module):
        super().__init__()
        self.peft = peft_model

    @property
    def config(self) -> Any:
        return self.peft.get_base_model().config

    def get_base_model(self) -> torch.nn.Module:
        return self.peft.get_base_model()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        kwargs.pop("position_ids", None)  # recomputed over the new layout
        batch, width = input_ids.shape
        n = _n_virtual(self.peft)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()):
            raise PeftopsError("prompt tuning needs left-padded rows (padding before the text only)")
        embeds = self.peft.word_embeddings(input_ids)
        prompts = self.peft.get_prompt(batch_size=batch).to(embeds.dtype)
        stacked = torch.cat([prompts, embeds], dim=1)  # [virtual][pads][text]
        # Move each row's pads in front of the virtual tokens: [pads][virtual][text].
        pads = (attention_mask == 0).sum(dim=1, keepdim=True)
        j = torch.arange(n + width, device=input_ids.device).unsqueeze(0)
        src = torch.where(j < pads, j + n, torch.where(j < pads + n, j - pads, j))
        inputs_embeds = stacked.gather(1, src.unsqueeze(-1).expand(-1, -1, stacked.shape[-1]))
        mask = (j >= pads).to(attention_mask.dtype)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return self.peft.base_model(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=positions, **kwargs)


@register
class PromptMethod:
    """Soft prompt of ``num_virtual_tokens`` embeddings; the base model is untouched (not mergeable)."""

    name = "prompt"
    config_cls = PromptConfig
    mergeable = False

    def apply(self, model: torch.nn.Module, cfg: PromptConfig) -> torch.nn.Module:
        from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

        init = PromptTuningInit.SAMPLE_VOCAB if cfg.init == "sample_vocab" else PromptTuningInit.RANDOM
        peft_cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens,
                                      prompt_tuning_init=init)
        return PromptTuned(get_peft_model(model, peft_cfg))

    def save(self, model: torch.nn.Module, cfg: PromptConfig, out_dir: Path) -> None:
        model.peft.save_pretrained(str(out_dir), safe_serialization=True)
        write_method_file(out_dir, self.name, cfg)

    def load(self, model: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
        from peft import PeftModel

        return PromptTuned(PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)).eval()

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        raise PeftopsError("prompt: a soft prompt is extra input, not a weight change; it cannot be merged")
