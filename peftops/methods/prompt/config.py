"""Prompt-tuning configuration."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from peftops.methods.base import LearningRate, MethodConfig

INITS = ("sample_vocab", "random")


class PromptConfig(MethodConfig):
    """``num_virtual_tokens`` soft-prompt embeddings, initialised from random vocabulary
    embeddings (``sample_vocab``) or from N(0, 1) (``random``)."""

    method_name: ClassVar[str] = "prompt"
    lr: LearningRate = 3e-2
    num_virtual_tokens: Annotated[int, Field(ge=1, le=1024)] = 20
    init: Literal["sample_vocab", "random"] = "sample_vocab"
