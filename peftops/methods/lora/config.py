"""LoRA configuration."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from peftops.methods.base import LearningRate, MethodConfig, Targets, target_names


class LoraMethodConfig(MethodConfig):
    """Rank ``r``, scale ``alpha/r`` (or ``alpha/sqrt(r)`` with rsLoRA), dropout and targets.

    ``target_modules='all-linear'`` means every linear layer of the transformer body (the tied
    LM head is excluded, as peft does).
    """

    method_name: ClassVar[str] = "lora"
    lr: LearningRate = 5e-4
    r: Annotated[int, Field(ge=1, le=4096)] = 16
    alpha: Annotated[float, Field(gt=0)] = 32.0
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    target_modules: Targets = "all-linear"
    use_dora: bool = False
    use_rslora: bool = False

    def peft_targets(self) -> list[str]:
        """Explicit module names (peft's 'all-linear' needs a model; the names are fixed)."""
        return target_names(self.target_modules)
