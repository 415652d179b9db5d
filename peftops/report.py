"""The comparison table: one row per method, rendered for the terminal, Markdown and JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from peftops.evaluate import EvalResult
from peftops.train import TrainResult


@dataclass
class Row:
    method: str
    metric: str
    score: float
    pct_of_full: float | None
    trainable_params: int
    trainable_pct: float
    peak_memory_mb: float | None
    train_time_s: float | None
    adapter_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_rows(evals: dict[str, EvalResult], trains: dict[str, TrainResult], base_params: int,
               baseline: str = "full") -> list[Row]:
    """Rows for every evaluated method; % of FFT when the baseline was evaluated."""
    ref = evals.get(baseline)
    rows = []
    for name, ev in evals.items():
        tr = trains.get(name)
        pct = 100.0 * ev.score / ref.score if ref and ref.score else None
        rows.append(Row(
            method=name, metric=ev.metric, score=ev.score, pct_of_full=pct,
            trainable_params=tr.trainable_params if tr else 0,
            trainable_pct=tr.trainable_pct if tr else 0.0,
            peak_memory_mb=tr.peak_memory_mb if tr else None, train_time_s=tr.train_time_s if tr else None,
            adapter_bytes=tr.adapter_bytes if tr else None,
        ))
    return rows


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


HEADERS = ["method", "dev {metric}", "% of FFT", "trainable params", "peak memory", "train time", "adapter bytes"]


def cells(row: Row) -> list[str]:
    return [
        row.method,
        f"{row.score:.4f}",
        "-" if row.pct_of_full is None else f"{row.pct_of_full:.1f}%",
        f"{row.trainable_params:,} ({row.trainable_pct:.3f}%)",
        "-" if row.peak_memory_mb is None else f"{row.peak_memory_mb:,.0f} MB",
        "-" if row.train_time_s is None else f"{row.train_time_s:.1f} s",
        _fmt_bytes(row.adapter_bytes),
    ]


def markdown(rows: list[Row]) -> str:
    """A GitHub-flavoured Markdown table."""
    metric = rows[0].metric if rows else "score"
    head = [h.format(metric=metric) for h in HEADERS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def rich_table(rows: list[Row], title: str = ""):
    """A rich ``Table`` for the terminal."""
    from rich.table import Table

    metric = rows[0].metric if rows else "score"
    table = Table(title=title or None)
    for i, h in enumerate(HEADERS):
        table.add_column(h.format(metric=metric), justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*cells(r))
    return table
