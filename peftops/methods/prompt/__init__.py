"""Prompt tuning (Lester et al., 2021) via peft: trainable virtual-token embeddings before the input."""

from peftops.methods.prompt.config import PromptConfig
from peftops.methods.prompt.method import PromptMethod, PromptTuned

__all__ = ["PromptConfig", "PromptMethod", "PromptTuned"]
