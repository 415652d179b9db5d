"""LoRA configuration."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, field_validator

from peftops.methods.base import LearningRate, MethodConfig, all_linear_or_names

# Gemma 3's linear layers, by the names peft matches on.
GEMMA3_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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
    target_modules: str | list[str] = "all-linear"
    use_dora: bool = False
    use_rslora: bool = False

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, value: str | list[str]) -> str | list[str]:
        return all_linear_or_names(value)

    def peft_targets(self) -> list[str]:
        """Explicit module names (peft's 'all-linear' needs a model; the names are fixed)."""
        return list(GEMMA3_LINEAR) if self.target_modules == "all-linear" else list(self.target_modules)
