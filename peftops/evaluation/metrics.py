"""GLUE metrics, computed from predicted and gold label indices, and generation metrics,
computed from generated and reference texts.

Generation: ``exact_match`` and ``token_f1`` as in SQuAD's evaluation script (lower-cased,
punctuation and the articles a/an/the removed, whitespace collapsed; token F1 over the bag of
words, 1.0 when both are empty), ``rougeL`` the F-measure of Google's ``rouge-score`` (its own
tokenizer, no stemming). Each is the mean over examples.

GLUE reports SST-2 and RTE accuracy, MRPC F1 (of the positive class, label index 1) and
accuracy, and CoLA the Matthews correlation coefficient. Matthews is computed in its
multi-class form (Gorodkin's R_K), which equals the binary formula for two labels.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter


def _check(pred: list, gold: list, what: str = "gold labels") -> None:
    if not gold:
        raise ValueError("no examples to score")
    if len(pred) != len(gold):
        raise ValueError(f"{len(pred)} predictions for {len(gold)} {what}")


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


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(pred: list[str], gold: list[str]) -> float:
    """Fraction of outputs equal to their reference after :func:`normalize_answer`."""
    _check(pred, gold, "references")
    return sum(normalize_answer(p) == normalize_answer(g) for p, g in zip(pred, gold)) / len(gold)


def token_f1_one(pred: str, gold: str) -> float:
    """SQuAD token F1 of one output against one reference."""
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def token_f1(pred: list[str], gold: list[str]) -> float:
    """Mean :func:`token_f1_one`."""
    _check(pred, gold, "references")
    return sum(token_f1_one(p, g) for p, g in zip(pred, gold)) / len(gold)


def rouge_l(pred: list[str], gold: list[str]) -> float:
    """Mean ROUGE-L F-measure (``rouge_score``, no stemming)."""
    from rouge_score import rouge_scorer

    _check(pred, gold, "references")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return sum(scorer.score(g, p)["rougeL"].fmeasure for p, g in zip(pred, gold)) / len(gold)


GENERATION_METRIC_FNS = {"rougeL": rouge_l, "token_f1": token_f1, "exact_match": exact_match}


def compute_generation(pred: list[str], gold: list[str]) -> dict[str, float]:
    """Every generation metric over the outputs."""
    return {n: fn(pred, gold) for n, fn in GENERATION_METRIC_FNS.items()}
