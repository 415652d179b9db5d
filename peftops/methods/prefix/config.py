"""Prefix-tuning configuration."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from peftops.methods.base import LearningRate, MethodConfig


class PrefixConfig(MethodConfig):
    """``num_virtual_tokens`` key/value pairs per layer. With ``projection`` the prefix is produced
    by a two-layer MLP of width ``projection_hidden`` during training (the reparameterisation of
    Li & Liang); the saved adapter holds the resulting prefix either way."""

    method_name: ClassVar[str] = "prefix"
    lr: LearningRate = 1e-2
    num_virtual_tokens: Annotated[int, Field(ge=1, le=1024)] = 20
    projection: bool = False
    projection_hidden: Annotated[int, Field(ge=1, le=65536)] = 512
