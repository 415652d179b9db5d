"""GLUE metrics, computed from predicted and gold label indices.

GLUE reports SST-2 and RTE accuracy, MRPC F1 (of the positive class, label index 1) and
accuracy, and CoLA the Matthews correlation coefficient. Matthews is computed in its
multi-class form (Gorodkin's R_K), which equals the binary formula for two labels.
"""

from __future__ import annotations

import math
from collections import Counter


def _check(pred: list[int], gold: list[int]) -> None:
    if not gold:
        raise ValueError("no examples to score")
    if len(pred) != len(gold):
        raise ValueError(f"{len(pred)} predictions for {len(gold)} gold labels")


def accuracy(pred: list[int], gold: list[int]) -> float:
    """Fraction of exact matches."""
    _check(pred, gold)
    return sum(p == g for p, g in zip(pred, gold)) / len(gold)


def f1(pred: list[int], gold: list[int], positive: int = 1) -> float:
    """F1 of the ``positive`` class (GLUE reports MRPC's F1 on label 1); 0 when it has no true positive."""
    _check(pred, gold)
    tp = sum(p == positive and g == positive for p, g in zip(pred, gold))
    fp = sum(p == positive and g != positive for p, g in zip(pred, gold))
    fn = sum(p != positive and g == positive for p, g in zip(pred, gold))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews(pred: list[int], gold: list[int]) -> float:
    """Matthews correlation coefficient (multi-class R_K; 0 when undefined, as sklearn).

    For two labels this is (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)).
    """
    _check(pred, gold)
    n = len(gold)
    correct = sum(p == g for p, g in zip(pred, gold))
    p_count, g_count = Counter(pred), Counter(gold)
    classes = set(p_count) | set(g_count)
    cov_pg = correct * n - sum(p_count[k] * g_count[k] for k in classes)
    cov_pp = n * n - sum(p_count[k] ** 2 for k in classes)
    cov_gg = n * n - sum(g_count[k] ** 2 for k in classes)
    denom = math.sqrt(cov_pp * cov_gg)
    return 0.0 if denom == 0 else cov_pg / denom


METRIC_FNS = {"accuracy": accuracy, "f1": f1, "matthews": matthews}


def compute(names: list[str], pred: list[int], gold: list[int]) -> dict[str, float]:
    """Every named metric over the predictions (an unknown name is a ``KeyError``)."""
    return {n: METRIC_FNS[n](pred, gold) for n in names}
