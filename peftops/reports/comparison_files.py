"""A comparison's files: ``<out>/<task>/comparison.{md,csv,json}`` with its charts, reading them
back, and the cross-task ``summary.md``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peftops.errors import PeftopsError
from peftops.fsutil import write_json_atomic, write_text_atomic
from peftops.reports.charts import comparison_charts
from peftops.reports.tables import CompareRow, compare_csv, compare_markdown


def write_outputs(rows: list[CompareRow], out_dir: Path, gate_pct: float = 95.0,
                  meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``comparison.{md,csv,json}`` and the charts under ``out_dir``; returns name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    files = {"md": out_dir / "comparison.md", "csv": out_dir / "comparison.csv", "json": out_dir / "comparison.json"}
    title = f"## {meta.get('task', rows[0].task if rows else '')}\n\n"
    budget = meta.get("budget")
    note = ""
    if budget:
        t = budget["train"]
        note = (f"\nBudget: {t['steps']} steps x batch {t['batch_size']} (grad accum {t['grad_accum']}) on "
                f"{budget['train_examples']} train examples, same for every method; dev: "
                f"{budget['dev_examples']} examples.\n")
    write_text_atomic(files["md"], title + compare_markdown(rows) + note)
    write_text_atomic(files["csv"], compare_csv(rows))
    write_json_atomic(files["json"], {**meta, "methods": [r.to_dict() for r in rows]})
    files.update(comparison_charts(rows, out_dir, gate_pct))
    return files


def load_comparison(path: str | Path) -> tuple[dict[str, Any], list[CompareRow]]:
    """Read a ``comparison.json``: (metadata, rows)."""
    p = Path(path)
    if not p.exists():
        raise PeftopsError(f"{p} not found; run `peftops compare` first")
    raw = json.loads(p.read_text())
    rows = [CompareRow.from_dict(d) for d in raw.pop("methods")]
    return raw, rows


def summary_markdown(comparisons: dict[str, list[CompareRow]], baseline: str = "full") -> str:
    """Across tasks: each method's score as % of FFT per task, and the average over the tasks."""
    tasks = list(comparisons)
    methods: list[str] = []
    for rows in comparisons.values():
        methods += [r.method for r in rows if r.method not in methods]
    head = ["method", *[f"{t} ({comparisons[t][0].metric})" for t in tasks], "mean % of FFT"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        cells, pcts = [m], []
        for t in tasks:
            row = next((r for r in comparisons[t] if r.method == m), None)
            if row is None:
                cells.append("-")
                continue
            pct = row.pct_of_full
            cells.append(f"{row.score:.3f}" + ("" if pct is None else f" ({pct:.1f}%)"))
            if pct is not None:
                pcts.append(pct)
        mean = f"{sum(pcts) / len(pcts):.1f}%" if pcts else "-"
        if pcts and len(pcts) < len(tasks):
            mean += f" ({len(pcts)} of {len(tasks)} tasks)"
        cells.append(mean)
        lines.append("| " + " | ".join(cells) + " |")
    note = ("\nA % of FFT is left out where FFT's score is <= 0 (Matthews correlation can be): a ratio to it "
            "means nothing.\n") if any(r.pct_of_full is None and r.method != "base"
                                       for rows in comparisons.values() for r in rows) else ""
    return "\n".join(lines) + "\n" + note


def write_summary(out_dir: str | Path, baseline: str = "full") -> Path | None:
    """``<out>/summary.md``: the cross-task table of every ``<out>/<task>/comparison.json``."""
    out_dir = Path(out_dir)
    comparisons = {}
    for path in sorted(out_dir.glob("*/comparison.json")):
        _, rows = load_comparison(path)
        if rows:
            comparisons[path.parent.name] = rows
    if not comparisons:
        return None
    target = out_dir / "summary.md"
    write_text_atomic(target, "# Score as % of FFT, per task\n\n" + summary_markdown(comparisons, baseline))
    return target
