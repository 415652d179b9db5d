"""BitFit configuration."""

from __future__ import annotations

from typing import ClassVar

from peftops.methods.base import LearningRate, MethodConfig, Targets, target_names


class BitFitConfig(MethodConfig):
    """Zero-initialised biases on the ``targets`` linear layers, plus the norm weights.

    Gemma 3's linear layers have no biases, so BitFit adds them. ``targets='all-linear'`` is every
    linear layer of the transformer body (q, k, v, o, gate, up, down); ``lm_head`` also gives the
    (tied) output projection a per-token bias (262,144 values on Gemma 3 270M).
    """

    method_name: ClassVar[str] = "bitfit"
    lr: LearningRate = 1e-3
    targets: Targets = "all-linear"
    train_norms: bool = True
    lm_head: bool = False

    def target_names(self) -> list[str]:
        """The short module names that get a bias."""
        return target_names(self.targets)
