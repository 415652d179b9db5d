"""How a flow calls the stage tasks: every stage but publish cached by its input key.

Every stage but publish gets its key from ``peftops.pipeline.caching.stage_key`` (data digest +
base digest + stage config + code version), persists its result under the state directory
(``<home>/prefect-results``) and is therefore a cache hit in any later flow run or process whose
inputs are the same: the demo, a comparison, a fleet and a retrain share these keys. A hit is only
taken when the stage's outputs are still on disk under the same key; otherwise (or with
``refresh``) the task reruns and overwrites the record. Which stages hit is kept in ``hits``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftops.config import PipelineParams
from peftops.data.manifest import data_path
from peftops.digest import file_sha256
from peftops.evaluation.measure import MeasureConfig
from peftops.pipeline import caching
from peftops.stages import Layout, stage_base
from tasks import base_task, evaluate_task, measure_task, merge_task, prepare_task, train_task

RESULTS_DIR = "prefect-results"


class StageCalls:
    """The stages of one task's pipeline, called as Prefect tasks from inside a flow."""

    def __init__(self, params: PipelineParams, home: str | Path | None = None, refresh: bool = False,
                 base_pinned: bool = False):
        self.params = params
        self.home = home
        self.refresh = refresh
        self.base_pinned = base_pinned
        self.task = params.data.task
        self.root = Layout.of(home).home
        self.hits: dict[str, bool] = {}
        self.keys: dict[str, str] = {}
        self._base_digest: str | None = None
        self._data_digest: str | None = None

    def base(self):
        """Pin and verify the base snapshot (never cached: it verifies the files themselves).

        With ``base_pinned`` (a fleet's task, whose fleet flow ran the pin-base task before its
        tasks) the same function runs as a plain call: the snapshot is still verified (its stat
        key against the process's last verification), but no task run is recorded. A task run
        costs the Prefect server ~50 ms of CPU (``python -m bench.fleet_bench --probe prefect``),
        paid once per task of a fleet."""
        snap = stage_base(self.params, self.home) if self.base_pinned else base_task(self.params, self.home)
        self._base_digest = snap.digest
        return snap

    def prepare(self):
        return self._call("prepare", None, prepare_task, self.params, self.home)

    def train(self, method: str, progress: bool = True, on_step=None):
        return self._call("train", method, train_task, self.params, method, self.home, progress, on_step=on_step)

    def evaluate(self, method: str | None):
        return self._call("evaluate", method, evaluate_task, self.params, method, self.home,
                          label=method or "base")

    def merge(self, method: str = "lora"):
        return self._call("merge", method, merge_task, self.params, self.home, method)

    def measure(self, method: str | None, cfg: MeasureConfig, threads: int):
        settings = measure_settings(self.params, cfg, threads)
        return self._call("measure", method, measure_task, self.params, method, cfg, self.home,
                          label=method or "base", measure=settings)

    def _call(self, stage: str, method: str | None, task_fn, *args: Any, measure: dict | None = None, **kwargs: Any):
        name = stage if stage == "prepare" else f"{stage}.{method or 'base'}"
        key = self.key(stage, method, measure)
        self.keys[name] = key
        out_dir = caching.stage_dir(self.root, stage, self.task, method)
        fn = task_fn.with_options(
            persist_result=True, result_storage=self.root / RESULTS_DIR,
            refresh_cache=self.refresh or not caching.outputs_current(out_dir, stage, key))
        state = fn(*args, cache_key=key, return_state=True, **kwargs)
        self.hits[name] = state.name == "Cached"
        return state.result()

    def key(self, stage: str, method: str | None, measure: dict | None = None) -> str:
        """The stage's cache key (needs ``base()`` first: the base digest is part of it)."""
        if self._base_digest is None:
            raise RuntimeError("call base() before a cached stage: the key includes the base digest")
        if self._data_digest is None:
            self._data_digest = caching.data_digest(self.params, self.task)
        return caching.stage_key(stage, self.params, self.task, method, self._data_digest, self._base_digest,
                                 measure=measure)


def measure_settings(params: PipelineParams, cfg: MeasureConfig, threads: int) -> dict[str, Any]:
    """What a measurement depends on besides the model: its settings, the general text's bytes, the
    eval batch size, and the device and thread count that latencies are taken with."""
    from peftops.stages import pick_device

    source = data_path(cfg.forgetting.source, params.data.data_root)
    try:
        source_digest = file_sha256(source)
    except OSError:
        source_digest = "missing"  # the stage itself says which file is missing
    return {"config": cfg.to_dict(), "general_source": source_digest, "device": pick_device().type,
            "threads": threads}
