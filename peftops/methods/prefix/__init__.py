"""Prefix tuning (Li & Liang, 2021) via peft: trainable key/value prefixes in every layer."""

from peftops.methods.prefix.config import PrefixConfig
from peftops.methods.prefix.method import PrefixMethod

__all__ = ["PrefixConfig", "PrefixMethod"]
