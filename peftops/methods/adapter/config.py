"""Houlsby adapter configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from peftops.methods.base import MethodConfig, check

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
PLACES = ("attention", "mlp")


@dataclass(frozen=True)
class AdapterConfig(MethodConfig):
    """A bottleneck of ``bottleneck`` units after the attention output projection and after the MLP.

    ``places`` chooses where (default both, as in the paper); ``train_norms`` also trains every
    normalisation weight, as Houlsby et al. do; ``init_std`` is the down-projection's initial
    standard deviation (the up-projection starts at zero, so the adapted model starts identical
    to the base).
    """

    method_name: ClassVar[str] = "adapter"
    lr: float = 1e-3
    bottleneck: int = 64
    activation: str = "gelu"
    places: list[str] = ("attention", "mlp")  # type: ignore[assignment]
    train_norms: bool = True
    init_std: float = 1e-2

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, "bottleneck", isinstance(self.bottleneck, int) and not isinstance(self.bottleneck, bool)
              and 1 <= self.bottleneck <= 65536, "must be an integer in [1, 65536]")
        check(self, "activation", self.activation in ACTIVATIONS, f"must be one of {', '.join(ACTIVATIONS)}")
        places = self.places
        check(self, "places", isinstance(places, (list, tuple)) and len(places) > 0
              and all(p in PLACES for p in places) and len(set(places)) == len(places),
              f"must be a non-empty list of distinct values from {', '.join(PLACES)}")
        object.__setattr__(self, "places", list(places))
        check(self, "train_norms", isinstance(self.train_norms, bool), "must be true or false")
        check(self, "init_std", isinstance(self.init_std, (int, float)) and 0 < self.init_std <= 1,
              "must be in (0, 1]")
