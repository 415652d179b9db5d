"""LoRA configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from peftops.methods.base import MethodConfig, check

# Gemma 3's linear layers, by the names peft matches on.
GEMMA3_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraMethodConfig(MethodConfig):
    """Rank ``r``, scale ``alpha/r`` (or ``alpha/sqrt(r)`` with rsLoRA), dropout and targets.

    ``target_modules='all-linear'`` means every linear layer of the transformer body (the tied
    LM head is excluded, as peft does).
    """

    method_name: ClassVar[str] = "lora"
    lr: float = 5e-4
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    use_dora: bool = False
    use_rslora: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, "r", isinstance(self.r, int) and 1 <= self.r <= 4096, "must be an integer in [1, 4096]")
        check(self, "alpha", self.alpha > 0, "must be > 0")
        check(self, "dropout", 0 <= self.dropout < 1, "must be in [0, 1)")
        if isinstance(self.target_modules, str):
            check(self, "target_modules", self.target_modules == "all-linear",
                  "must be 'all-linear' or a list of module names")
        else:
            check(self, "target_modules", len(self.target_modules) > 0 and all(
                isinstance(m, str) and m for m in self.target_modules), "must be a non-empty list of names")
            object.__setattr__(self, "target_modules", list(self.target_modules))

    def peft_targets(self) -> list[str]:
        """Explicit module names (peft's 'all-linear' needs a model; the names are fixed)."""
        return list(GEMMA3_LINEAR) if self.target_modules == "all-linear" else list(self.target_modules)
