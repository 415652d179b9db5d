"""Full fine-tuning configuration."""

from __future__ import annotations

from typing import ClassVar

from peftops.methods.base import LearningRate, MethodConfig


class FullConfig(MethodConfig):
    """Every parameter trains; only the learning rate is the method's own."""

    method_name: ClassVar[str] = "full"
    lr: LearningRate = 2e-5
