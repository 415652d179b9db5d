"""PNG charts of a comparison: score as % of FFT, peak training memory, latency, forgetting.

matplotlib runs headless (Agg backend); each chart is written atomically and its path returned.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from peftops.reports.tables import CompareRow

COLORS = {"base": "#9e9e9e", "full": "#37474f", "lora": "#1e88e5", "adapter": "#8e24aa", "bitfit": "#43a047",
          "prompt": "#fb8c00", "prefix": "#e53935"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def _figure(path: Path, size: tuple[float, float] = (6.4, 3.6)):
    """A figure's axes; on leaving, the figure is laid out, saved atomically to ``path`` and closed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)


def _bars(ax, names: list[str], values: list[float], fmt: str) -> None:
    bars = ax.bar(names, values, color=[COLORS.get(n, "#607d8b") for n in names])
    _annotate(ax, bars, values, fmt)


def _annotate(ax, bars, values: list[float], fmt: str, fontsize: int = 8) -> None:
    """Each bar's value just above it."""
    for b, v in zip(bars, values):
        ax.annotate(format(v, fmt), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                    fontsize=fontsize, xytext=(0, 2), textcoords="offset points")


def score_chart(rows: list[CompareRow], path: Path, gate_pct: float = 95.0) -> Path | None:
    """Each method's task score as % of FFT, with the 100% line and the quality gate."""
    have = [r for r in rows if r.pct_of_full is not None]
    if not have:
        return None
    with _figure(path) as ax:
        _bars(ax, [r.method for r in have], [r.pct_of_full for r in have], ".1f")
        ax.axhline(100.0, color="black", linewidth=0.8)
        ax.axhline(gate_pct, color="#c62828", linestyle="--", linewidth=0.8, label=f"gate {gate_pct:g}%")
        ax.set_ylabel(f"dev {have[0].metric}, % of FFT")
        ax.set_title(f"{have[0].task}: score relative to full fine-tuning")
        ax.legend(loc="lower right", fontsize=8)
    return path


def memory_chart(rows: list[CompareRow], path: Path) -> Path | None:
    """Peak training memory per method."""
    have = [r for r in rows if r.peak_train_memory_mb is not None]
    if not have:
        return None
    with _figure(path) as ax:
        _bars(ax, [r.method for r in have], [r.peak_train_memory_mb / 1024 for r in have], ".2f")
        kind = have[0].memory_kind or ""
        ax.set_ylabel("peak training memory (GiB)" + (f"\n{kind}" if kind else ""))
        ax.set_title(f"{have[0].task}: peak memory while training")
    return path


def latency_chart(rows: list[CompareRow], path: Path) -> Path | None:
    """Inference latency per example, one group of bars per batch size."""
    sizes = sorted({bs for r in rows for bs in r.latency_ms}, key=int)
    if not rows or not sizes:
        return None
    with _figure(path, (7.2, 3.8)) as ax:
        width = 0.8 / len(sizes)
        xs = range(len(rows))
        for k, bs in enumerate(sizes):
            vals = [r.latency_ms.get(bs, 0.0) for r in rows]
            bars = ax.bar([x - 0.4 + width * (k + 0.5) for x in xs], vals, width, label=f"batch {bs}")
            _annotate(ax, bars, vals, ".0f", fontsize=7)
        ax.set_xticks(list(xs), [r.method for r in rows])
        ax.set_ylabel("ms per example (median)")
        ax.set_title(f"{rows[0].task}: inference latency")
        ax.legend(fontsize=8)
    return path


def forgetting_chart(rows: list[CompareRow], path: Path) -> Path | None:
    """Change of the general-text loss per method (above zero: forgot some general ability)."""
    if not rows:
        return None
    with _figure(path) as ax:
        _bars(ax, [r.method for r in rows], [r.general_nll_delta for r in rows], "+.3f")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_ylabel("general-text NLL after - before\n(nats/token)")
        ax.set_title(f"{rows[0].task}: forgetting on held-out general text")
    return path


def comparison_charts(rows: list[CompareRow], out_dir: Path, gate_pct: float = 95.0) -> dict[str, Path]:
    """Every chart for one task's comparison; returns name -> PNG path (charts without data are skipped)."""
    out_dir = Path(out_dir)
    made = {
        "score_pct_of_full": score_chart(rows, out_dir / "score_pct_of_full.png", gate_pct),
        "memory": memory_chart(rows, out_dir / "memory.png"),
        "latency": latency_chart(rows, out_dir / "latency.png"),
        "forgetting": forgetting_chart(rows, out_dir / "forgetting.png"),
    }
    return {k: v for k, v in made.items() if v is not None}
