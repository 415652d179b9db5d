"""Prefix-tuning configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from peftops.methods.base import MethodConfig, check


@dataclass(frozen=True)
class PrefixConfig(MethodConfig):
    """``num_virtual_tokens`` key/value pairs per layer. With ``projection`` the prefix is produced
    by a two-layer MLP of width ``projection_hidden`` during training (the reparameterisation of
    Li & Liang); the saved adapter holds the resulting prefix either way."""

    method_name: ClassVar[str] = "prefix"
    lr: float = 1e-2
    num_virtual_tokens: int = 20
    projection: bool = False
    projection_hidden: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, "num_virtual_tokens", isinstance(self.num_virtual_tokens, int)
              and not isinstance(self.num_virtual_tokens, bool) and 1 <= self.num_virtual_tokens <= 1024,
              "must be an integer in [1, 1024]")
        check(self, "projection", isinstance(self.projection, bool), "must be true or false")
        check(self, "projection_hidden", isinstance(self.projection_hidden, int)
              and not isinstance(self.projection_hidden, bool) and 1 <= self.projection_hidden <= 65536,
              "must be an integer in [1, 65536]")
