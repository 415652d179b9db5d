"""The quality gate: an adapter becomes ``production`` only if it is close enough to FFT.

``decide`` compares an adapter's task score with the full-fine-tuning baseline's score on the
same task and dev split. ``publish_gated`` always publishes the adapter (it is a valid,
versioned artifact either way) but points the production alias at it only when the gate
passes; otherwise the reason is recorded on the version (tag ``gate`` and lineage field
``gate``) and, when a tracker is given, on the MLflow run.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from peftops.config import PipelineParams
from peftops.errors import ConfigError, PeftopsError

DEFAULT_MIN_PCT = 95.0


@dataclass(frozen=True)
class GateDecision:
    """Whether to promote, and why (in words a reviewer can read)."""

    promote: bool
    reason: str
    pct: float | None  # score as % of the FFT score
    score: float
    full_score: float | None
    min_pct: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(score: float, full_score: float | None, min_pct: float = DEFAULT_MIN_PCT,
           metric: str = "score") -> GateDecision:
    """Promote when ``score`` is at least ``min_pct`` % of ``full_score``.

    Without a usable baseline (missing, zero or negative, which Matthews correlation can be)
    the gate refuses: a percentage of it means nothing.
    """
    if not 0 < min_pct <= 1000 or not math.isfinite(min_pct):
        raise ConfigError("gate.min_pct_of_full", f"must be in (0, 1000], got {min_pct!r}")
    if not math.isfinite(score):
        return GateDecision(False, f"{metric} is {score}; not promoted", None, score, full_score, min_pct)
    if full_score is None:
        return GateDecision(False, "no FFT baseline score on this task; not promoted", None, score, None, min_pct)
    if not math.isfinite(full_score) or full_score <= 0:
        return GateDecision(False, f"FFT baseline {metric} is {full_score:.4f}; a percentage of it is "
                            "meaningless, so not promoted", None, score, full_score, min_pct)
    pct = 100.0 * score / full_score
    if pct >= min_pct:
        return GateDecision(True, f"{metric} {score:.4f} is {pct:.1f}% of FFT's {full_score:.4f} "
                            f"(>= {min_pct:g}%): promoted", pct, score, full_score, min_pct)
    return GateDecision(False, f"{metric} {score:.4f} is {pct:.1f}% of FFT's {full_score:.4f}, "
                        f"below the {min_pct:g}% gate: published but not promoted", pct, score, full_score, min_pct)


def read_eval(run_dir: Path) -> dict[str, Any]:
    """The ``eval.json`` a method's evaluation wrote."""
    path = Path(run_dir) / "eval.json"
    if not path.exists():
        raise PeftopsError(f"{path} not found; run `peftops evaluate --method {Path(run_dir).name}` first")
    return json.loads(path.read_text())


def publish_gated(params: PipelineParams, home: str | Path | None = None, method_name: str = "lora", *,
                  score: float | None = None, full_score: float | None = None,
                  min_pct: float | None = None, alias: str | None = None, metric: str | None = None,
                  metrics: dict[str, float] | None = None, lineage: dict[str, Any] | None = None,
                  tags: dict[str, str] | None = None, tracker: Any = None,
                  run_id: str | None = None) -> tuple[Any, GateDecision]:
    """Publish ``method_name``'s adapter; set the production alias only if the gate passes.

    ``score`` and ``full_score`` default to the ``eval.json`` of the method's and the
    baseline's runs; ``min_pct`` and ``alias`` to ``params.gate``. Returns the registry
    version (with its aliases as they are after the decision) and the decision.
    """
    from peftops.stages import Layout, stage_publish

    gate = params.gate
    min_pct = gate.min_pct_of_full if min_pct is None else min_pct
    alias = alias or gate.alias
    layout = Layout.of(home)
    task = params.data.task
    metric = metric or "score"
    if score is None:
        ev = read_eval(layout.run(task, method_name))
        score, metric = ev["score"], ev["metric"]
        metrics = {**{f"dev_{k}": v for k, v in ev["metrics"].items()}, **(metrics or {})}
    if full_score is None:
        full_dir = layout.run(task, gate.baseline)
        full_score = read_eval(full_dir)["score"] if (full_dir / "eval.json").exists() else None
    decision = decide(score, full_score, min_pct, metric)
    gate_record = {**decision.to_dict(), "alias": alias, "baseline": gate.baseline}
    all_metrics = dict(metrics or {})
    if decision.pct is not None:
        all_metrics.setdefault("pct_of_full", decision.pct)
    # One registry call, one transaction: the version, the decision's tags and (when it
    # passes) the alias. Identical content already published gets the latest decision.
    version = stage_publish(params, home, method_name, metrics=all_metrics,
                            lineage={**(lineage or {}), "gate": gate_record},
                            tags={**(tags or {}), "gate": "promoted" if decision.promote else "refused",
                                  "gate_reason": decision.reason[:1024]},
                            aliases=[alias] if decision.promote else [])
    if tracker is not None and run_id is not None:
        tracker.set_tags(run_id, {"gate.promoted": str(decision.promote).lower(), "gate.reason": decision.reason})
        if decision.pct is not None:
            tracker.log_metrics(run_id, {"gate_pct_of_full": decision.pct})
    return version, decision
