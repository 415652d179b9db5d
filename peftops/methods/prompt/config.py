"""Prompt-tuning configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from peftops.methods.base import MethodConfig, check

INITS = ("sample_vocab", "random")


@dataclass(frozen=True)
class PromptConfig(MethodConfig):
    """``num_virtual_tokens`` soft-prompt embeddings, initialised from random vocabulary
    embeddings (``sample_vocab``) or from N(0, 1) (``random``)."""

    method_name: ClassVar[str] = "prompt"
    lr: float = 3e-2
    num_virtual_tokens: int = 20
    init: str = "sample_vocab"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, "num_virtual_tokens", isinstance(self.num_virtual_tokens, int)
              and not isinstance(self.num_virtual_tokens, bool) and 1 <= self.num_virtual_tokens <= 1024,
              "must be an integer in [1, 1024]")
        check(self, "init", self.init in INITS, f"must be one of {', '.join(INITS)}")
