"""Full fine-tuning: the gold-standard baseline every PEFT method is measured against."""

from peftops.methods.full.config import FullConfig
from peftops.methods.full.method import FullMethod

__all__ = ["FullConfig", "FullMethod"]
