"""Full fine-tuning configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from peftops.methods.base import MethodConfig


@dataclass(frozen=True)
class FullConfig(MethodConfig):
    """Every parameter trains; only the learning rate is the method's own."""

    method_name: ClassVar[str] = "full"
    lr: float = 2e-5
