"""Compare PEFT methods against full fine-tuning on one task, at one budget.

``run_compare`` trains every method with the same ``TrainConfig`` (same data, steps, batch
size and seed; each method keeps its own learning rate and hyperparameters), evaluates it on
the dev split, and measures what it costs and what it breaks:

* the task metric and its % of the FFT score;
* trainable parameters (count and % of the base), peak training memory, train time, bytes
  of the saved adapter;
* inference latency per example at batch 1 and 16 (median of several batches);
* forgetting: the change of the loss on held-out general text (``peftops.evaluation.forgetting``).

It writes ``<out>/<task>/comparison.{md,csv,json}`` and PNG charts, and logs one MLflow
parent run with a child run per method, the charts as artifacts. With ``reuse`` a method
whose inputs (base, data, budget, method config, measurement settings) are unchanged since
the last comparison is not trained or measured again, so an interrupted run can resume.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from peftops.model.snapshot import load_tokenizer
from peftops.reports.charts import comparison_charts
from peftops.config import PipelineParams, for_task, to_dict
from peftops.data.prepared import PreparedSplit, load_prepared
from peftops.digest import canonical_json, text_sha256
from peftops.errors import ConfigError, PeftopsError
from peftops.evaluation.evaluate import evaluate, latency_per_example
from peftops.evaluation.forgetting import ForgettingConfig, GeneralTextSet, build_general_set, general_nll
from peftops.fsutil import write_json_atomic, write_text_atomic
from peftops.training.memory import release_memory
from peftops.methods import get_method, make_config
from peftops.reports.tables import CompareRow, compare_csv, compare_markdown

DEFAULT_METHODS = ("lora", "adapter", "bitfit", "prompt", "prefix", "full")
RECORD = "compare.json"


@dataclass(frozen=True)
class CompareConfig:
    """What to compare and how to measure it."""

    task: str
    methods: tuple[str, ...] = DEFAULT_METHODS
    out_dir: str = "reports"
    baseline: str = "full"
    include_base: bool = True  # a zero-shot row for the untouched base model
    latency_batch_sizes: tuple[int, ...] = (1, 16)
    latency_batches: int = 3  # timed batches per batch size, after one warm-up (the median is reported)
    forgetting: ForgettingConfig = field(default_factory=ForgettingConfig)
    reuse: bool = False
    experiment: str = "peftops-compare"
    threads: int | None = None  # torch intra-op threads (None: torch's default); recorded with the numbers
    command: str = ""  # the command line that produced this comparison, recorded with it

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("compare.methods", "name at least one method")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError("compare.methods", f"a method is listed twice: {', '.join(self.methods)}")
        for m in self.methods:
            get_method(m)  # an unknown name lists the known ones
        if not self.latency_batch_sizes or any(b < 1 for b in self.latency_batch_sizes):
            raise ConfigError("compare.latency_batch_sizes", "must be batch sizes >= 1")
        if self.latency_batches < 1:
            raise ConfigError("compare.latency_batches", "must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("compare.threads", "must be >= 1")


@dataclass
class CompareResult:
    """A finished comparison: its rows and where everything was written."""

    task: str
    rows: list[CompareRow]
    files: dict[str, Path]
    parent_run_id: str
    tracking_uri: str
    seconds: float

    def row(self, method: str) -> CompareRow:
        return next(r for r in self.rows if r.method == method)


def parse_methods(text: str) -> tuple[str, ...]:
    """``'lora,full'`` -> ``('lora', 'full')``; ``'all'`` -> every registered method, FFT last."""
    from peftops.methods import available_methods

    if text.strip() == "all":
        names = available_methods()
        return tuple([m for m in names if m != "full"] + (["full"] if "full" in names else []))
    return tuple(m.strip() for m in text.split(",") if m.strip())


def _key(obj: Any) -> str:
    return text_sha256(canonical_json(obj))


def _latency_ms(model: torch.nn.Module, split: PreparedSplit, pad_id: int, cfg: CompareConfig,
                device: torch.device) -> dict[str, float]:
    out = {}
    for bs in cfg.latency_batch_sizes:
        sec = latency_per_example(model, split, pad_id=pad_id, batch_size=bs, device=device,
                                  n_batches=cfg.latency_batches, warmup=1)
        out[str(bs)] = 1000.0 * sec
    return out


def _measure(model: torch.nn.Module, dev: PreparedSplit, texts: GeneralTextSet, pad_id: int,
             cfg: CompareConfig, params: PipelineParams, device: torch.device) -> dict[str, Any]:
    ev = evaluate(model, dev, pad_id=pad_id, batch_size=params.train.eval_batch_size, device=device)
    lat = _latency_ms(model, dev, pad_id, cfg, device)
    nll = general_nll(model, texts, pad_id=pad_id, batch_size=cfg.forgetting.batch_size, device=device)
    return {"eval": ev.to_dict(), "latency_ms": lat, "general_nll": nll}


def _load_record(path: Path, key: str | None) -> dict[str, Any] | None:
    """A method's last record if its key is ``key`` (any key when None)."""
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
    except ValueError:
        return None
    return rec if key is None or rec.get("key") == key else None


def run_compare(params: PipelineParams, cfg: CompareConfig, home: str | Path | None = None,
                progress: bool = True) -> CompareResult:
    """Train, evaluate and measure every method of ``cfg`` on ``cfg.task``; write and log the table."""
    from peftops import stages as P
    from peftops.pipeline.tracking import Tracker

    t_start = time.perf_counter()
    if cfg.threads:
        # On a shared CPU one thread per process can be several times faster than spinning OpenMP workers.
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    params = for_task(params, cfg.task)
    layout = P.Layout.of(home)
    snap = P.stage_base(params, home)
    prep = P.stage_prepare(params, home)
    tokenizer = load_tokenizer(snap)
    pad_id = tokenizer.pad_token_id
    dev = load_prepared(prep.dev_path)
    texts = build_general_set(tokenizer, cfg.forgetting, params.data.data_root)
    device = P.pick_device()
    measure_cfg = {"latency_batch_sizes": list(cfg.latency_batch_sizes), "latency_batches": cfg.latency_batches,
                   "general_set": texts.digest, "dev": dev.digest, "eval_batch_size": params.train.eval_batch_size,
                   "device": device.type, "threads": threads}
    budget = {"train": to_dict(params.train), "train_examples": prep.train_size, "dev_examples": prep.dev_size,
              "data_seed": params.data.seed}
    tracker = Tracker(experiment=cfg.experiment, home=home)
    rows: list[CompareRow] = []
    base_dir = layout.run(cfg.task, "base")
    with tracker.run(f"compare-{cfg.task}",
                     params={"task": cfg.task, "methods": ",".join(cfg.methods), "budget": budget,
                             "forgetting": to_dict(cfg.forgetting), "command": cfg.command},
                     tags={"task": cfg.task, "base_digest": snap.digest, "data_digest": prep.digest,
                           "kind": "compare"}) as parent:
        # The base model: zero-shot score, latency, and the general-text loss every method is compared with.
        base_key = _key({"base": snap.digest, "measure": measure_cfg})
        rec = _load_record(base_dir / RECORD, base_key) if cfg.reuse else None
        if rec is None:
            model = P.load_adapted(snap, None, None, device)
            rec = {"key": base_key, **_measure(model, dev, texts, pad_id, cfg, params, device)}
            del model
            release_memory()
            write_json_atomic(base_dir / RECORD, rec)
        nll_before = rec["general_nll"]
        if cfg.include_base:
            rows.append(_row(cfg.task, "base", rec, None, nll_before, dev))
        child_ids: dict[str, str] = {}
        for name in cfg.methods:
            mcfg = make_config(name, params.methods.get(name))
            run_dir = layout.run(cfg.task, name)
            train_key = _key({"base": snap.digest, "data": prep.digest, "train": to_dict(params.train),
                              "method": name, "method_config": mcfg.to_dict(), "device": device.type,
                              "threads": threads})
            key = _key({"train": train_key, "measure": measure_cfg})
            with tracker.run(name, parent_id=parent, tags={"task": cfg.task, "method": name},
                             params={"method": name, **mcfg.to_dict(), "train": to_dict(params.train)}) as child:
                child_ids[name] = child
                old = _load_record(run_dir / RECORD, None) if cfg.reuse and (run_dir / "adapter").exists() else None
                rec = old if old and old["key"] == key else None
                if rec is None:
                    if old and old.get("train_key") == train_key:  # trained at this budget: measure again only
                        train_info = old["train"]
                    else:
                        P.stage_train(params, name, home, progress=progress, resume=False)
                        release_memory()
                        train_info = json.loads((run_dir / "train.json").read_text())
                    model = P.load_adapted(snap, name, run_dir / "adapter", device)
                    kept = {k: v for k, v in train_info.items() if k not in ("losses", "trained_parameter_names")}
                    rec = {"key": key, "train_key": train_key, "train": kept,
                           **_measure(model, dev, texts, pad_id, cfg, params, device)}
                    del model
                    release_memory()
                    write_json_atomic(run_dir / "eval.json", {**rec["eval"], "dev_digest": dev.digest,
                                                              "base_digest": snap.digest})
                    write_json_atomic(run_dir / RECORD, rec)
                row = _row(cfg.task, name, rec, rec["train"], nll_before, dev)
                rows.append(row)
                tracker.log_history(child, rec["train"].get("history", []))
        _fill_pct(rows, cfg.baseline)
        for row in rows:
            if row.method in child_ids:
                tracker.log_metrics(child_ids[row.method], _run_metrics(row))
                tracker.log_json(child_ids[row.method], row.to_dict(), "comparison-row.json")
        files = write_outputs(rows, Path(cfg.out_dir) / cfg.task, params.gate.min_pct_of_full, meta={
            "task": cfg.task, "metric": dev.metric, "methods": list(cfg.methods), "baseline": cfg.baseline,
            "budget": budget, "base": snap.name, "base_digest": snap.digest, "data_digest": prep.digest,
            "general_set": {"digest": texts.digest, "texts": len(texts), "tokens": texts.n_tokens,
                            "source": Path(texts.source).name},
            "latency": {"batch_sizes": list(cfg.latency_batch_sizes), "timed_batches": cfg.latency_batches,
                        "statistic": "median ms per example", "device": device.type, "torch_threads": threads},
            "memory_kind": next((r.memory_kind for r in rows if r.memory_kind), None),
            "command": cfg.command, "mlflow_parent_run_id": parent,
        })
        for name, path in files.items():
            tracker.log_artifact(parent, path, "charts" if path.suffix == ".png" else None)
        base_row = next((r for r in rows if r.method == "base"), None)
        if base_row is not None:
            tracker.log_metrics(parent, {"base_score": base_row.score, "general_nll_base": nll_before})
    return CompareResult(task=cfg.task, rows=rows, files=files, parent_run_id=parent,
                         tracking_uri=tracker.tracking_uri, seconds=time.perf_counter() - t_start)


def _row(task: str, method: str, rec: dict[str, Any], train: dict[str, Any] | None, nll_before: float,
         dev: PreparedSplit) -> CompareRow:
    ev = rec["eval"]
    base_params = (train or {}).get("base_params") or 0
    trainable = (train or {}).get("trainable_params", 0)
    return CompareRow(
        task=task, method=method, metric=ev["metric"], score=ev["score"], metrics=dict(ev["metrics"]),
        pct_of_full=None, trainable_params=trainable,
        trainable_pct=100.0 * trainable / base_params if base_params else 0.0,
        peak_train_memory_mb=(train or {}).get("peak_memory_mb"), memory_kind=(train or {}).get("memory_kind"),
        train_time_s=(train or {}).get("train_time_s"), train_steps=(train or {}).get("steps", 0),
        examples_per_s=(train or {}).get("examples_per_s"), adapter_bytes=(train or {}).get("adapter_bytes"),
        latency_ms=dict(rec["latency_ms"]), general_nll_before=nll_before, general_nll_after=rec["general_nll"],
        dev_examples=len(dev),
    )


def _fill_pct(rows: list[CompareRow], baseline: str) -> None:
    ref = next((r for r in rows if r.method == baseline), None)
    if ref is None or ref.score <= 0:  # Matthews can be <= 0: a percentage of it means nothing
        return
    for r in rows:
        r.pct_of_full = 100.0 * r.score / ref.score


def _run_metrics(row: CompareRow) -> dict[str, float]:
    m = {f"dev_{k}": v for k, v in row.metrics.items()}
    m.update({"trainable_params": row.trainable_params, "trainable_pct": row.trainable_pct,
              "general_nll_before": row.general_nll_before, "general_nll_after": row.general_nll_after,
              "general_nll_delta": row.general_nll_delta})
    for k in ("pct_of_full", "peak_train_memory_mb", "train_time_s", "examples_per_s", "adapter_bytes"):
        if getattr(row, k) is not None:
            m[k] = getattr(row, k)
    m.update({f"latency_ms_b{bs}": v for bs, v in row.latency_ms.items()})
    return m


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
