"""GLUE metrics, computed from predicted and gold label indices."""

from __future__ import annotations

import math


def accuracy(pred: list[int], gold: list[int]) -> float:
    """Fraction of exact matches."""
    if not gold:
        raise ValueError("no examples to score")
    return sum(p == g for p, g in zip(pred, gold)) / len(gold)


def f1(pred: list[int], gold: list[int], positive: int = 1) -> float:
    """F1 of the ``positive`` class (GLUE reports MRPC's F1 on label 1)."""
    tp = sum(p == positive and g == positive for p, g in zip(pred, gold))
    fp = sum(p == positive and g != positive for p, g in zip(pred, gold))
    fn = sum(p != positive and g == positive for p, g in zip(pred, gold))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews(pred: list[int], gold: list[int], positive: int = 1) -> float:
    """Matthews correlation coefficient for binary labels (0 when undefined, as sklearn)."""
    tp = sum(p == positive and g == positive for p, g in zip(pred, gold))
    tn = sum(p != positive and g != positive for p, g in zip(pred, gold))
    fp = sum(p == positive and g != positive for p, g in zip(pred, gold))
    fn = sum(p != positive and g == positive for p, g in zip(pred, gold))
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denom == 0 else (tp * tn - fp * fn) / denom


METRIC_FNS = {"accuracy": accuracy, "f1": f1, "matthews": matthews}


def compute(names: list[str], pred: list[int], gold: list[int]) -> dict[str, float]:
    """Every named metric over the predictions."""
    return {n: METRIC_FNS[n](pred, gold) for n in names}
