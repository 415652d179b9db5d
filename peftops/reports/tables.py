"""The comparison table: one row per method, rendered for the terminal, Markdown and JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from peftops.evaluation.evaluate import EvalResult
from peftops.training.loop import TrainResult


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


# ---------------------------------------------------------------- the comparison table


@dataclass
class CompareRow:
    """One method of ``peftops compare``: task score, cost, latency and forgetting."""

    task: str
    method: str
    metric: str
    score: float
    metrics: dict[str, float]
    pct_of_full: float | None
    trainable_params: int
    trainable_pct: float
    peak_train_memory_mb: float | None
    memory_kind: str | None
    train_time_s: float | None
    train_steps: int
    examples_per_s: float | None
    adapter_bytes: int | None
    latency_ms: dict[str, float]  # batch size (as text) -> milliseconds per example
    general_nll_before: float
    general_nll_after: float
    dev_examples: int
    latency_ms_per_token: dict[str, float] = field(default_factory=dict)  # generation: batch size -> ms per token

    @property
    def general_nll_delta(self) -> float:
        return self.general_nll_after - self.general_nll_before

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON object: ``latency_ms_b<N>`` per batch size, ``metric_<name>`` per metric."""
        d = asdict(self)
        d.pop("latency_ms")
        d.pop("latency_ms_per_token")
        for bs, ms in sorted(self.latency_ms.items(), key=lambda kv: int(kv[0])):
            d[f"latency_ms_b{bs}"] = ms
        for bs, ms in sorted(self.latency_ms_per_token.items(), key=lambda kv: int(kv[0])):
            d[f"ms_per_token_b{bs}"] = ms
        d["general_nll_delta"] = self.general_nll_delta
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CompareRow":
        d = dict(d)
        d.pop("general_nll_delta", None)
        lat = {k[len("latency_ms_b"):]: d.pop(k) for k in list(d) if k.startswith("latency_ms_b")}
        tok = {k[len("ms_per_token_b"):]: d.pop(k) for k in list(d) if k.startswith("ms_per_token_b")}
        return cls(**d, latency_ms=lat, latency_ms_per_token=tok)


def _fmt_opt(v: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if v is None else f"{v:{fmt}}{suffix}"


def compare_headers(rows: list[CompareRow]) -> list[str]:
    """Column titles: the task metric first, then its extra metrics, cost, latency, forgetting."""
    metric = rows[0].metric if rows else "score"
    extra = [m for m in (rows[0].metrics if rows else {}) if m != metric]
    sizes = sorted({bs for r in rows for bs in r.latency_ms}, key=int)
    tok_sizes = sorted({bs for r in rows for bs in r.latency_ms_per_token}, key=int)
    return (["method", f"dev {metric}", *[f"dev {m}" for m in extra], "% of FFT", "trainable params",
             "peak train memory", "train time", "adapter on disk"]
            + [f"latency b{bs} (ms/ex)" for bs in sizes] + [f"latency b{bs} (ms/token)" for bs in tok_sizes]
            + ["general NLL Δ (nats/tok)"])


def compare_cells(row: CompareRow, rows: list[CompareRow]) -> list[str]:
    """One table row as strings, in the order of ``compare_headers``."""
    extra = [m for m in row.metrics if m != row.metric]
    sizes = sorted({bs for r in rows for bs in r.latency_ms}, key=int)
    tok_sizes = sorted({bs for r in rows for bs in r.latency_ms_per_token}, key=int)
    return ([row.method, f"{row.score:.4f}", *[f"{row.metrics[m]:.4f}" for m in extra],
             _fmt_opt(row.pct_of_full, ".1f", "%"),
             f"{row.trainable_params:,} ({row.trainable_pct:.3f}%)",
             _fmt_opt(row.peak_train_memory_mb, ",.0f", " MB"), _fmt_opt(row.train_time_s, ".1f", " s"),
             _fmt_bytes(row.adapter_bytes)]
            + [_fmt_opt(row.latency_ms.get(bs), ".1f") for bs in sizes]
            + [_fmt_opt(row.latency_ms_per_token.get(bs), ".2f") for bs in tok_sizes]
            + [f"{row.general_nll_delta:+.4f}"])


def compare_markdown(rows: list[CompareRow]) -> str:
    """The comparison as a Markdown table."""
    head = compare_headers(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(compare_cells(r, rows)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def compare_csv(rows: list[CompareRow]) -> str:
    """The comparison as CSV: raw numbers (no units), one row per method."""
    import csv
    import io

    flat = []
    for r in rows:
        d = r.to_dict()
        metrics = d.pop("metrics")
        d.update({f"metric_{k}": v for k, v in metrics.items()})
        flat.append(d)
    keys: list[str] = []
    for d in flat:
        keys += [k for k in d if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return buf.getvalue()


def compare_rich_table(rows: list[CompareRow], title: str = ""):
    """The comparison as a rich ``Table`` for the terminal."""
    from rich.table import Table

    table = Table(title=title or None)
    for i, h in enumerate(compare_headers(rows)):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*compare_cells(r, rows))
    return table
