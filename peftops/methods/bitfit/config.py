"""BitFit configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from peftops.methods.base import MethodConfig, check
from peftops.methods.lora.config import GEMMA3_LINEAR


@dataclass(frozen=True)
class BitFitConfig(MethodConfig):
    """Zero-initialised biases on the ``targets`` linear layers, plus the norm weights.

    Gemma 3's linear layers have no biases, so BitFit adds them. ``targets='all-linear'`` is every
    linear layer of the transformer body (q, k, v, o, gate, up, down); ``lm_head`` also gives the
    (tied) output projection a per-token bias (262,144 values on Gemma 3 270M).
    """

    method_name: ClassVar[str] = "bitfit"
    lr: float = 1e-3
    targets: str | list[str] = "all-linear"
    train_norms: bool = True
    lm_head: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.targets, str):
            check(self, "targets", self.targets == "all-linear", "must be 'all-linear' or a list of module names")
        else:
            check(self, "targets", isinstance(self.targets, (list, tuple)) and len(self.targets) > 0 and all(
                isinstance(m, str) and m for m in self.targets), "must be a non-empty list of module names")
            object.__setattr__(self, "targets", list(self.targets))
        check(self, "train_norms", isinstance(self.train_norms, bool), "must be true or false")
        check(self, "lm_head", isinstance(self.lm_head, bool), "must be true or false")

    def target_names(self) -> list[str]:
        """The short module names that get a bias."""
        return list(GEMMA3_LINEAR) if self.targets == "all-linear" else list(self.targets)
