"""Houlsby adapter configuration."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator

from peftops.methods.base import LearningRate, MethodConfig

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
PLACES = ("attention", "mlp")


class AdapterConfig(MethodConfig):
    """A bottleneck of ``bottleneck`` units after the attention output projection and after the MLP.

    ``places`` chooses where (default both, as in the paper); ``train_norms`` also trains every
    normalisation weight, as Houlsby et al. do; ``init_std`` is the down-projection's initial
    standard deviation (the up-projection starts at zero, so the adapted model starts identical
    to the base).
    """

    method_name: ClassVar[str] = "adapter"
    lr: LearningRate = 1e-3
    bottleneck: Annotated[int, Field(ge=1, le=65536)] = 64
    activation: Literal["gelu", "gelu_tanh", "relu", "silu"] = "gelu"
    places: list[str] = Field(default_factory=lambda: list(PLACES))
    train_norms: bool = True
    init_std: Annotated[float, Field(gt=0, le=1)] = 1e-2

    @field_validator("places")
    @classmethod
    def _places(cls, value: list[str]) -> list[str]:
        if not value or not all(p in PLACES for p in value) or len(set(value)) != len(value):
            raise ValueError(f"must be a non-empty list of distinct values from {', '.join(PLACES)}")
        return value
