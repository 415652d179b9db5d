"""BitFit on a model whose linear layers have no biases.

Every targeted ``nn.Linear`` gets a real, zero-initialised ``bias`` parameter (so the model starts
out identical to the base) and only those biases, plus the norm weights, train. Because the
biases are ordinary ``Linear.bias`` parameters, the trained model *is* its own merged form:
``merge`` only freezes it. Saved as ``adapter_model.safetensors`` (the trained tensors by name) +
``adapter_config.json`` (``peft_type: BITFIT``, which modules got a bias, every trained tensor).

Export caveat: transformers' Gemma 3 builds q/k/v/o with ``bias=config.attention_bias`` but its
MLP (gate/up/down) never has a bias, so ``from_pretrained`` of an exported merged model keeps the
attention biases (``merge`` sets ``attention_bias=True``) and would drop the MLP ones; the merge
stage re-certifies the reloaded export and refuses it then. ``mlp_bias_keys`` lists those
tensors; ``targets: [q_proj, k_proj, v_proj, o_proj]`` gives a merge that transformers reloads
exactly. In memory every BitFit model merges exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch

from peftops.errors import PeftopsError
from peftops.methods import register
from peftops.methods.base import AdapterError, freeze_all, load_named, norm_parameters
from peftops.methods.bitfit.config import BitFitConfig
from peftops.methods.saved import open_saved, save_tensors

PEFT_TYPE = "BITFIT"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def bias_modules(model: torch.nn.Module, cfg: BitFitConfig) -> list[str]:
    """Names of the linear layers that get a trainable bias under ``cfg``."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    wanted = set(cfg.target_names())
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if module is head:
            if cfg.lm_head:
                names.append(name)
        elif name.rsplit(".", 1)[-1] in wanted:
            names.append(name)
    return names


def add_biases(model: torch.nn.Module, names: list[str]) -> None:
    """Give each named linear layer a zero bias if it has none."""
    modules = dict(model.named_modules())
    for name in names:
        module = modules.get(name)
        if not isinstance(module, torch.nn.Linear):
            raise AdapterError(f"module {name!r} is not a linear layer of this model")
        if module.bias is None:
            w = module.weight
            module.bias = torch.nn.Parameter(torch.zeros(module.out_features, device=w.device, dtype=w.dtype))


def mlp_bias_keys(model: torch.nn.Module) -> list[str]:
    """Bias tensors that transformers' Gemma 3 cannot hold (not q/k/v/o, not absent)."""
    return [f"{n}.bias" for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m.bias is not None and n.rsplit(".", 1)[-1] not in ATTENTION]


@register
class BitFitMethod:
    """Bias-only fine-tuning (plus norms); mergeable, the biases become plain ``Linear.bias``."""

    name = "bitfit"
    config_cls = BitFitConfig
    mergeable = True

    def apply(self, model: torch.nn.Module, cfg: BitFitConfig) -> torch.nn.Module:
        freeze_all(model)
        names = bias_modules(model, cfg)
        if not names:
            raise PeftopsError(f"bitfit: no linear layer named {', '.join(cfg.target_names())} in the model")
        add_biases(model, names)
        modules = dict(model.named_modules())
        for name in names:
            modules[name].bias.requires_grad_(True)
        if cfg.train_norms:
            for _, p in norm_parameters(model):
                p.requires_grad_(True)
        model.peftops_bitfit_modules = names
        return model

    def save(self, model: torch.nn.Module, cfg: BitFitConfig, out_dir: Path) -> None:
        names = getattr(model, "peftops_bitfit_modules", None) or bias_modules(model, cfg)
        modules = dict(model.named_modules())
        tensors = {f"{n}.bias": modules[n].bias for n in names}
        if cfg.train_norms:
            tensors.update(norm_parameters(model))
        config = {"peft_type": PEFT_TYPE, "bias_modules": names, "norms_trained": cfg.train_norms,
                  "lm_head": cfg.lm_head, "trained_tensors": sorted(tensors),
                  "trainable_params": int(sum(t.numel() for t in tensors.values()))}
        save_tensors(out_dir, self.name, cfg, tensors, config)

    def load(self, model: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
        config, tensors, weights = open_saved(adapter_dir, PEFT_TYPE)
        names = list(config["bias_modules"])
        add_biases(model, names)
        absent = [f"{n}.bias" for n in names if f"{n}.bias" not in tensors]
        if absent:
            raise AdapterError(f"{weights}: no tensor for {absent[0]!r} ({len(absent)} missing)")
        load_named(model, tensors, weights)
        freeze_all(model)
        model.peftops_bitfit_modules = names
        model.eval()
        return model

    def fold_targets(self, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        """None: the merge writes into no base weight (the biases and norms are the adapter's own)."""
        return {}

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        """The biases already are ``Linear.bias``: freeze, and let the config say q/k/v/o have them."""
        freeze_all(model)
        modules = dict(model.named_modules())
        attn = [m for n, m in modules.items() if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in ATTENTION]
        config = getattr(model, "config", None)
        if any(m.bias is not None for m in attn) and config is not None and hasattr(config, "attention_bias"):
            # from_pretrained builds q/k/v/o with biases only when attention_bias is set; a layer without
            # a trained bias then gets an explicit zero one so the whole set is uniform.
            for m in attn:
                if m.bias is None:
                    m.bias = torch.nn.Parameter(torch.zeros(m.out_features, device=m.weight.device,
                                                            dtype=m.weight.dtype), requires_grad=False)
            config.attention_bias = True
        if hasattr(model, "peftops_bitfit_modules"):
            del model.peftops_bitfit_modules
        return model
