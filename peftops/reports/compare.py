"""A comparison of PEFT methods against full fine-tuning on one task, at one budget: what to
compare (``CompareConfig``) and its rows, built from the stage records of the shared pipeline.

Every method trains with the same ``TrainConfig`` (same data, steps, batch size and seed; each
method keeps its own learning rate and hyperparameters), is evaluated on the dev split and
measured: the task metric and its % of the FFT score; trainable parameters, peak training memory,
train time, adapter bytes; latency per example at each batch size; forgetting (the loss change on
held-out general text). The flow that runs it is ``flows.compare``; the files it writes are
``peftops.reports.comparison_files``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator

from peftops.config import Config, FieldError
from peftops.errors import ConfigError
from peftops.evaluation.forgetting import ForgettingConfig
from peftops.evaluation.measure import BatchSizes, MeasureConfig
from peftops.methods import available_methods
from peftops.reports.tables import CompareRow

DEFAULT_METHODS = ("lora", "adapter", "bitfit", "prompt", "prefix", "full")


class CompareConfig(Config):
    """What to compare and how to measure it."""

    config_prefix: ClassVar[str] = "compare"
    task: str
    methods: Annotated[tuple[str, ...], Field(min_length=1)] = DEFAULT_METHODS
    out_dir: str = "reports"
    baseline: str = "full"
    include_base: bool = True  # a zero-shot row for the untouched base model
    latency_batch_sizes: BatchSizes = (1, 16)
    latency_batches: Annotated[int, Field(ge=1)] = 3  # timed batches per size after one warm-up (median reported)
    forgetting: ForgettingConfig = ForgettingConfig()
    reuse: bool = False  # take the stages' cache hits (else every stage runs again)
    experiment: str = "peftops-compare"
    threads: Annotated[int, Field(ge=1)] | None = None  # torch intra-op threads (None: torch's default)
    command: str = ""  # the command line that produced this comparison, recorded with it

    @field_validator("methods")
    @classmethod
    def _known_once(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(methods)) != len(methods):
            raise FieldError("methods", f"a method is listed twice: {', '.join(methods)}")
        known = available_methods()
        for m in methods:
            if m not in known:
                raise FieldError("methods", f"unknown method {m!r}; available: {', '.join(known)}")
        return methods

    @property
    def measure(self) -> MeasureConfig:
        """The measure stage's settings."""
        return MeasureConfig(latency_batch_sizes=tuple(self.latency_batch_sizes),
                             latency_batches=self.latency_batches, forgetting=self.forgetting)


def parse_methods(text: str) -> tuple[str, ...]:
    """``'lora,full'`` -> ``('lora', 'full')``; ``'all'`` -> every registered method, FFT last."""
    if text.strip() == "all":
        names = available_methods()
        return tuple([m for m in names if m != "full"] + (["full"] if "full" in names else []))
    return tuple(m.strip() for m in text.split(",") if m.strip())


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``'1,16'`` -> ``(1, 16)``; anything but positive integers is a ``ConfigError`` naming the option."""
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise ConfigError("compare.latency_batch_sizes",
                          f"batch sizes must be comma-separated positive integers, got {text!r}", "--latency-batch-sizes")
    return sizes


def compare_row(task: str, method: str, ev: dict[str, Any], measure: dict[str, Any], train: dict[str, Any] | None,
                nll_before: float, dev_examples: int) -> CompareRow:
    """One row from a method's evaluation, measurement and training records (``train`` None: the base)."""
    train = train or {}
    base_params = train.get("base_params") or 0
    trainable = train.get("trainable_params", 0)
    return CompareRow(
        task=task, method=method, metric=ev["metric"], score=ev["score"], metrics=dict(ev["metrics"]),
        pct_of_full=None, trainable_params=trainable,
        trainable_pct=100.0 * trainable / base_params if base_params else 0.0,
        peak_train_memory_mb=train.get("peak_memory_mb"), memory_kind=train.get("memory_kind"),
        train_time_s=train.get("train_time_s"), train_steps=train.get("steps", 0),
        examples_per_s=train.get("examples_per_s"), adapter_bytes=train.get("adapter_bytes"),
        latency_ms=dict(measure["latency_ms"]), general_nll_before=nll_before,
        general_nll_after=measure["general_nll"], dev_examples=dev_examples,
        latency_ms_per_token=dict(measure.get("latency_ms_per_token") or {}),
    )


def fill_pct(rows: list[CompareRow], baseline: str) -> None:
    """Each row's score as % of the baseline's, where that means something."""
    ref = next((r for r in rows if r.method == baseline), None)
    if ref is None or ref.score <= 0:  # Matthews can be <= 0: a percentage of it means nothing
        return
    for r in rows:
        r.pct_of_full = 100.0 * r.score / ref.score


def row_metrics(row: CompareRow) -> dict[str, float]:
    """A row as flat run metrics (for a tracking run)."""
    m = {f"dev_{k}": v for k, v in row.metrics.items()}
    m.update({"trainable_params": row.trainable_params, "trainable_pct": row.trainable_pct,
              "general_nll_before": row.general_nll_before, "general_nll_after": row.general_nll_after,
              "general_nll_delta": row.general_nll_delta})
    for k in ("pct_of_full", "peak_train_memory_mb", "train_time_s", "examples_per_s", "adapter_bytes"):
        if getattr(row, k) is not None:
            m[k] = getattr(row, k)
    m.update({f"latency_ms_b{bs}": v for bs, v in row.latency_ms.items()})
    m.update({f"ms_per_token_b{bs}": v for bs, v in row.latency_ms_per_token.items()})
    return m
