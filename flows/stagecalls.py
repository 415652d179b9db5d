"""How a flow calls the stage tasks: plainly (the demo always recomputes) or cached by input keys.

With ``cache=True`` every stage but publish gets its key from ``peftops.pipeline.caching.stage_key``
(data digest + base digest + stage config + code version), persists its result under the
state directory (``<home>/prefect-results``, a local path) and is therefore a
cache hit in any later flow run or process whose inputs are the same. A hit is only taken when
the stage's outputs are still on disk under the same key; otherwise the task is told to
refresh its cache (it reruns and overwrites the record). Which stages hit is kept in ``hits``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftops.pipeline import caching
from peftops.config import PipelineParams
from peftops.stages import Layout
from tasks import base_task, evaluate_task, merge_task, prepare_task, train_task

RESULTS_DIR = "prefect-results"


class StageCalls:
    """The stages of one task's pipeline, called as Prefect tasks from inside a flow."""

    def __init__(self, params: PipelineParams, home: str | Path | None = None, cache: bool = False):
        self.params = params
        self.home = home
        self.cache = cache
        self.task = params.data.task
        self.root = Layout.of(home).home
        self.hits: dict[str, bool] = {}
        self.keys: dict[str, str] = {}
        self._base_digest: str | None = None
        self._data_digest: str | None = None

    def base(self):
        """Pin and verify the base snapshot (never cached: it verifies the files themselves)."""
        snap = base_task(self.params, self.home)
        self._base_digest = snap.digest
        return snap

    def prepare(self):
        return self._call("prepare", None, prepare_task, self.params, self.home)

    def train(self, method: str, progress: bool = True):
        return self._call("train", method, train_task, self.params, method, self.home, progress)

    def evaluate(self, method: str | None):
        return self._call("evaluate", method, evaluate_task, self.params, method, self.home,
                          label=method or "base")

    def merge(self, method: str = "lora"):
        return self._call("merge", method, merge_task, self.params, self.home, method)

    def _call(self, stage: str, method: str | None, task_fn, *args: Any, **kwargs: Any):
        name = stage if stage == "prepare" else f"{stage}.{method or 'base'}"
        if not self.cache:
            self.hits[name] = False
            return task_fn(*args, **kwargs)
        key = self.key(stage, method)
        self.keys[name] = key
        out_dir = caching.stage_dir(self.root, stage, self.task, method)
        fn = task_fn.with_options(
            persist_result=True, result_storage=self.root / RESULTS_DIR,
            refresh_cache=not caching.outputs_current(out_dir, stage, key))
        state = fn(*args, cache_key=key, return_state=True, **kwargs)
        self.hits[name] = state.name == "Cached"
        return state.result()

    def key(self, stage: str, method: str | None) -> str:
        """The stage's cache key (needs ``base()`` first: the base digest is part of it)."""
        if self._base_digest is None:
            raise RuntimeError("call base() before a cached stage: the key includes the base digest")
        if self._data_digest is None:
            self._data_digest = caching.data_digest(self.params, self.task)
        return caching.stage_key(stage, self.params, self.task, method, self._data_digest, self._base_digest)
