"""Houlsby adapters: a small bottleneck MLP with a skip connection, in series with each sublayer.

``h <- h + W_up · act(W_down · h)`` is applied to the output of every layer's attention output
projection (``self_attn.o_proj``) and of every layer's MLP, i.e. before Gemma 3's post-sublayer
norm and the residual add, the placement of Houlsby et al. (2019, fig. 2). ``W_up`` starts at zero,
so the adapted model starts out identical to the base. The norm weights train too, as in the
paper. The bottleneck modules hang off the wrapped module (``...o_proj.houlsby``, ``...mlp.houlsby``)
and run from a forward hook, so every base parameter keeps its name.

Saved as ``adapter_model.safetensors`` + ``adapter_config.json`` (``peft_type: HOULSBY_ADAPTER``).
Adapters are serial, not parallel to a linear layer: they cannot be merged into the base weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from peftops.errors import PeftopsError
from peftops.methods import register
from peftops.methods.adapter.config import AdapterConfig
from peftops.methods.base import AdapterError, freeze_all, load_named, norm_parameters
from peftops.methods.saved import open_saved, save_tensors

PEFT_TYPE = "HOULSBY_ADAPTER"
ATTR = "houlsby"

_ACT = {
    "gelu": lambda: torch.nn.GELU(),
    "gelu_tanh": lambda: torch.nn.GELU(approximate="tanh"),
    "relu": lambda: torch.nn.ReLU(),
    "silu": lambda: torch.nn.SiLU(),
}


class Bottleneck(torch.nn.Module):
    """``x + up(act(down(x)))`` with ``up`` initialised to zero (an identity at the start)."""

    def __init__(self, dim: int, bottleneck: int, activation: str, init_std: float):
        super().__init__()
        self.down = torch.nn.Linear(dim, bottleneck)
        self.act = _ACT[activation]()
        self.up = torch.nn.Linear(bottleneck, dim)
        with torch.no_grad():
            self.down.weight.normal_(0.0, init_std)
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


def _hook(module: torch.nn.Module, inputs: Any, output: Any) -> Any:
    adapter = getattr(module, ATTR)
    if isinstance(output, tuple):  # a sublayer that returns (hidden, extras)
        return (adapter(output[0]), *output[1:])
    return adapter(output)


def insertion_points(model: torch.nn.Module, places: list[str]) -> list[str]:
    """Names of the modules whose output gets an adapter: each layer's o_proj and/or MLP."""
    names = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if "attention" in places and leaf == "o_proj" and isinstance(module, torch.nn.Linear):
            names.append(name)
        elif "mlp" in places and leaf == "mlp" and hasattr(module, "down_proj"):
            names.append(name)
    return names


def _output_dim(module: torch.nn.Module) -> int:
    return module.out_features if isinstance(module, torch.nn.Linear) else module.down_proj.out_features


def insert(model: torch.nn.Module, points: list[str], bottleneck: int, activation: str, init_std: float) -> None:
    """Attach a ``Bottleneck`` and its forward hook to each named module."""
    modules = dict(model.named_modules())
    ref = next(model.parameters())
    for name in points:
        if name not in modules:
            raise AdapterError(f"module {name!r} not found in the model; the adapter was saved for another model")
        module = modules[name]
        if hasattr(module, ATTR):
            raise PeftopsError(f"module {name!r} already has an adapter")
        module.add_module(ATTR, Bottleneck(_output_dim(module), bottleneck, activation, init_std).to(
            device=ref.device, dtype=ref.dtype))
        module.register_forward_hook(_hook)


@register
class AdapterMethod:
    """Houlsby bottleneck adapters (serial): small, modular, not mergeable."""

    name = "adapter"
    config_cls = AdapterConfig
    mergeable = False

    def apply(self, model: torch.nn.Module, cfg: AdapterConfig) -> torch.nn.Module:
        freeze_all(model)
        points = insertion_points(model, cfg.places)
        if not points:
            raise PeftopsError("adapter: no attention output projection or MLP found in the model")
        insert(model, points, cfg.bottleneck, cfg.activation, cfg.init_std)
        if cfg.train_norms:
            for _, p in norm_parameters(model):
                p.requires_grad_(True)
        return model

    def save(self, model: torch.nn.Module, cfg: AdapterConfig, out_dir: Path) -> None:
        # The bottleneck tensors, plus the norm weights when they train: what differs from the base.
        trained = {n: p for n, p in model.named_parameters() if f".{ATTR}." in n}
        if cfg.train_norms:
            trained.update(norm_parameters(model))
        config = {
            "peft_type": PEFT_TYPE, "bottleneck_size": cfg.bottleneck, "activation": cfg.activation,
            "init_std": cfg.init_std, "places": cfg.places, "insertion_points": _points_of(model),
            "norms_trained": cfg.train_norms,
            "trained_tensors": sorted(trained),
            "base_model_class": type(model).__name__,
            "hidden_size": getattr(getattr(model, "config", None), "hidden_size", None),
        }
        save_tensors(out_dir, self.name, cfg, trained, config)

    def load(self, model: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
        config, tensors, weights = open_saved(adapter_dir, PEFT_TYPE)
        freeze_all(model)
        insert(model, list(config["insertion_points"]), int(config["bottleneck_size"]), config["activation"],
               float(config.get("init_std", 1e-2)))
        missing = [n for n, _ in model.named_parameters() if f".{ATTR}." in n and n not in tensors]
        if missing:
            raise AdapterError(f"{weights}: no tensor for {missing[0]!r} ({len(missing)} missing)")
        load_named(model, tensors, weights)
        freeze_all(model)
        model.eval()
        return model

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        raise PeftopsError("adapter: Houlsby adapters are serial (a nonlinearity sits between the two "
                           "projections), so they cannot be folded into the base weights")


def _points_of(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if hasattr(m, ATTR) and isinstance(getattr(m, ATTR), Bottleneck)]
