"""MLflow tracking: the only module that imports mlflow.

Default store: ``sqlite:///<state>/mlflow/mlflow.db`` with artifacts under
``<state>/mlflow/artifacts``; look at it with ``mlflow ui --backend-store-uri <that uri>``.
A pipeline opens one parent run and a child run per method; step metrics go in one
``log_batch`` call per run (one call per step is ~10x slower on SQLite).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from peftops.config import state_home

def default_tracking_uri(home: str | Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI, else a SQLite file in the state directory."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    path = state_home(home) / "mlflow" / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _flat(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


class Tracker:
    """A thin handle over one MLflow experiment."""

    def __init__(self, experiment: str = "peftops", tracking_uri: str | None = None,
                 home: str | Path | None = None):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri or default_tracking_uri(home)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            artifacts = None
            if self.tracking_uri.startswith("sqlite:///"):
                root = Path(self.tracking_uri[len("sqlite:///"):]).parent / "artifacts"
                artifacts = root.resolve().as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifacts)
        else:
            self.experiment_id = exp.experiment_id
        self.experiment = experiment

    @contextlib.contextmanager
    def run(self, name: str, params: dict[str, Any] | None = None, tags: dict[str, str] | None = None,
            parent_id: str | None = None) -> Iterator[str]:
        """Open a run (a child run when ``parent_id`` is given); ends FAILED on an exception."""
        all_tags = dict(tags or {})
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        run_id = run.info.run_id
        if params:
            self.log_params(run_id, params)
        try:
            yield run_id
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = _flat(params)
        items = [Param(k, v) for k, v in flat.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start:start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if v is not None]
        for start in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[start:start + 1000])

    def log_history(self, run_id: str, history: list[dict[str, float]]) -> None:
        """Per-step metrics (each record has a 'step' key) in batched calls."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, int(rec["step"])) for rec in history for k, v in rec.items() if k != "step"]
        for start in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[start:start + 1000])

    def step_logger(self, run_id: str, every: int = 10) -> "StepLogger":
        """A callback for the training loop that logs each step's metrics while the run trains."""
        return StepLogger(self, run_id, every)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_json(self, run_id: str, obj: Any, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / name
            p.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
            self.client.log_artifact(run_id, str(p))

    def log_text(self, run_id: str, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / name
            p.write_text(text)
            self.client.log_artifact(run_id, str(p))

    def describe_experiment(self, text: str) -> None:
        """The experiment's description (shown on its page in the MLflow UI)."""
        self.client.set_experiment_tag(self.experiment_id, "mlflow.note.content", text)

    def log_dataset(self, run_id: str, name: str, digest: str, source: str, context: str,
                    profile: dict[str, Any] | None = None) -> None:
        """Record a dataset the run used (``context``: training or evaluation): our content digest
        (MLflow's field holds 36 characters; the full digest goes in the profile), where it came from."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        hexdigest = digest.split(":", 1)[-1]
        ds = Dataset(name=name, digest=hexdigest[:36], source_type="local", source=json.dumps({"uri": source}),
                     profile=json.dumps({"digest": digest, **(profile or {})}, default=str))
        self.client.log_inputs(run_id, [DatasetInput(ds, [InputTag("mlflow.data.context", context)])])

    @contextlib.contextmanager
    def system_metrics(self, run_id: str, interval_s: float | None = None) -> Iterator[None]:
        """MLflow's own system metrics (CPU, memory, disk, network; GPU where present) for the block."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        interval = interval_s or float(os.environ.get("PEFTOPS_SYSTEM_METRICS_INTERVAL", "5"))
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, samples_before_logging=1,
                                       tracking_uri=self.tracking_uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    def log_model(self, run_id: str, name: str, local_dir: str | Path, params: dict[str, Any] | None = None,
                  tags: dict[str, str] | None = None, model_type: str = "peft-adapter") -> str:
        """Log ``local_dir`` as a model of the run (MLflow 3's logged models); returns its model id."""
        from mlflow.entities import LoggedModelOutput

        model = self.client.create_logged_model(self.experiment_id, name=name, source_run_id=run_id,
                                                tags=tags, params=_flat(params or {}), model_type=model_type)
        try:
            self.client.log_model_artifacts(model.model_id, str(local_dir))
        except BaseException:
            self.client.finalize_logged_model(model.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(model.model_id, "READY")
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        return model.model_id

    def log_table(self, run_id: str, rows: list[dict[str, Any]], name: str) -> None:
        """A table artifact (one column per key) that the MLflow UI renders and compares across runs."""
        columns: dict[str, list[Any]] = {}
        for row in rows:
            for k in row:
                columns.setdefault(k, [])
        for row in rows:
            for k, col in columns.items():
                v = row.get(k)
                col.append(v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v, default=str))
        self.client.log_table(run_id, columns, name)

    def log_figure(self, run_id: str, figure: Any, name: str) -> None:
        self.client.log_figure(run_id, figure, name)

    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"


class StepLogger:
    """Per-step metrics, logged while training runs: buffered and sent every ``every`` steps by a
    background thread (one ``log_batch`` call per flush), so a step never waits on the store.
    Each metric keeps the time of its own step. Use as a context manager; ``steps`` counts what it saw."""

    def __init__(self, tracker: Tracker, run_id: str, every: int = 10):
        from concurrent.futures import ThreadPoolExecutor

        self.tracker, self.run_id, self.every = tracker, run_id, max(1, every)
        self.steps = 0
        self._buffer: list[Any] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-steps")
        self._pending: list[Any] = []

    def __call__(self, step: int, record: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), ts, int(step)) for k, v in record.items() if k != "step"]
        self.steps += 1
        if self.steps % self.every == 0:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            batch, self._buffer = self._buffer, []
            self._pending.append(self._pool.submit(self.tracker.client.log_batch, self.run_id, metrics=batch))

    def __enter__(self) -> "StepLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._flush()
        self._pool.shutdown(wait=True)
        for f in self._pending:
            f.result()  # a failed flush is the run's error, not a silent gap
