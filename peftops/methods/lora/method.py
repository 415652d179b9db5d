"""Apply, save, load and merge LoRA via peft (PEFT format, loadable by peft and vLLM)."""

from __future__ import annotations

from pathlib import Path

import torch

from peftops.training.kernels import replace_dropouts
from peftops.methods import register
from peftops.methods.base import write_method_file
from peftops.methods.lora.config import LoraMethodConfig
from peftops.methods.lora.fused import fuse_lora_linears


@register
class LoraMethod:
    """Low-rank updates in parallel to frozen linear layers; mergeable into the base."""

    name = "lora"
    config_cls = LoraMethodConfig
    mergeable = True

    def apply(self, model: torch.nn.Module, cfg: LoraMethodConfig) -> torch.nn.Module:
        from peft import LoraConfig, get_peft_model

        peft_cfg = LoraConfig(
            r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.peft_targets(),
            use_dora=cfg.use_dora, use_rslora=cfg.use_rslora, bias="none", task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, peft_cfg)
        # peft draws each LoRA dropout mask with bernoulli_ (8 % of a CPU step on Gemma 3 270M);
        # the same distribution from a quarter of the random draws, see peftops.training.kernels.
        replace_dropouts(model, "lora_dropout")
        fuse_lora_linears(model)  # the scaled sum as one product: same values, fewer passes
        return model

    def save(self, model: torch.nn.Module, cfg: LoraMethodConfig, out_dir: Path) -> None:
        # peft writes adapter_config.json + adapter_model.safetensors (never pickle).
        model.save_pretrained(str(out_dir), safe_serialization=True)
        write_method_file(out_dir, self.name, cfg)

    def load(self, model: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        fuse_lora_linears(model)  # evaluation and the merge certificate see training's forward
        return model

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.merge_and_unload()

    def fold_targets(self, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        """The weight of each LoRA-wrapped layer (what ``merge`` adds ``B A`` to), by snapshot name."""
        from peft.tuners.lora import LoraLayer

        inner = model.get_base_model()
        return {f"{name}.weight": module.get_base_layer().weight
                for name, module in inner.named_modules() if isinstance(module, LoraLayer)}
