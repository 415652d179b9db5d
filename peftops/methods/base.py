"""What every PEFT method provides, and the shared part of every method's config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol

import torch
from pydantic import AfterValidator, Field

from peftops.config import Config
from peftops.errors import ConfigError, PeftopsError

METHOD_FILE = "peftops_method.json"


LearningRate = Annotated[float, Field(gt=0, lt=1)]


class MethodConfig(Config):
    """Fields every method has. ``lr`` lives here: the best rate differs by method.

    A method's config is the one place its defaults live; ``make_config(name, values)`` builds it
    from a params.yaml block and errors name ``methods.<name>.<field>``.
    """

    method_name: ClassVar[str] = "method"
    lr: LearningRate = 1e-4

    @classmethod
    def error_prefix(cls, data: Any) -> str:
        return f"methods.{cls.method_name}"


# Gemma 3's linear layers: what ``all-linear`` means for a method that targets modules.
GEMMA3_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def all_linear_or_names(value: str | list[str]) -> str | list[str]:
    """``'all-linear'`` or a non-empty list of module names, else a ``ValueError``."""
    if value != "all-linear" and (isinstance(value, str) or not value
                                  or not all(isinstance(m, str) and m for m in value)):
        raise ValueError("must be 'all-linear' or a non-empty list of module names")
    return value


# A config field naming the modules a method targets: 'all-linear' or module names, validated.
Targets = Annotated[str | list[str], AfterValidator(all_linear_or_names)]


def target_names(value: str | list[str]) -> list[str]:
    """The short module names a ``Targets`` value stands for."""
    return list(GEMMA3_LINEAR) if value == "all-linear" else list(value)


class Method(Protocol):
    """A PEFT method: how to make a model trainable, save, load and (maybe) merge it."""

    name: ClassVar[str]
    config_cls: ClassVar[type]
    mergeable: ClassVar[bool]

    def apply(self, model: torch.nn.Module, cfg: Any) -> torch.nn.Module:
        """Return the model to train: only the method's parameters require grad."""

    def save(self, model: torch.nn.Module, cfg: Any, out_dir: Path) -> None:
        """Write the trained parameters to ``out_dir`` (an empty directory)."""

    def load(self, model: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
        """Apply saved parameters from ``adapter_dir`` to a freshly loaded base ``model``."""

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        """Fold the method into plain base weights (only when ``mergeable``)."""

    # Optional, for mergeable methods: ``fold_targets(model) -> dict[str, torch.nn.Parameter]``,
    # the base parameters of the adapter-applied ``model`` that ``merge`` writes into, by their
    # names in the base snapshot. With it a bf16 run's merge folds in fp32 by giving only those
    # parameters their fp32 values (``peftops.evaluation.merge``) instead of loading the fp32 base.


def write_method_file(out_dir: Path, name: str, cfg: Any) -> None:
    """Record which method (and config) produced an adapter directory."""
    payload = {"method": name, "config": cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)}
    (Path(out_dir) / METHOD_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_method_file(adapter_dir: Path) -> dict[str, Any]:
    """Read the method record of an adapter directory."""
    path = Path(adapter_dir) / METHOD_FILE
    if not path.exists():
        raise ConfigError("adapter", f"{path} not found: not a peftops adapter directory")
    return json.loads(path.read_text())


class AdapterError(PeftopsError):
    """A saved adapter directory is incomplete or does not fit the model it is loaded into."""


def freeze_all(model: torch.nn.Module) -> None:
    """Set ``requires_grad=False`` on every parameter."""
    for p in model.parameters():
        p.requires_grad_(False)


def is_norm(module: torch.nn.Module) -> bool:
    """RMSNorm (Gemma) or LayerNorm: the normalisation layers whose weights Houlsby and BitFit train."""
    return isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


def norm_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of every normalisation layer's weight (and bias, if any), in model order."""
    out = []
    for mod_name, module in model.named_modules():
        if is_norm(module):
            for p_name, p in module.named_parameters(recurse=False):
                out.append((f"{mod_name}.{p_name}" if mod_name else p_name, p))
    return out


def load_named(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Copy ``tensors`` into the parameters of ``model`` with the same names.

    A tensor stored in a wider float dtype than its parameter (fp32 trained tensors, a bf16 base)
    replaces the parameter's data in its own dtype. Every tensor must name an existing parameter of
    the same shape; anything else is an ``AdapterError`` naming the file and the tensor (never a silent partial load).
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, value in tensors.items():
            if name not in params:
                raise AdapterError(f"{where}: tensor {name!r} matches no parameter of the model")
            if params[name].shape != value.shape:
                raise AdapterError(f"{where}: tensor {name!r} has shape {tuple(value.shape)}, "
                                   f"the model expects {tuple(params[name].shape)}")
            param = params[name]
            if param.is_floating_point() and value.is_floating_point() and value.dtype != param.dtype \
                    and torch.finfo(value.dtype).bits > torch.finfo(param.dtype).bits:
                # a trained fp32 tensor loaded into a bf16 base keeps its fp32 values (as in training)
                param.data = value.to(param.device)
            else:
                param.copy_(value.to(param.dtype))
