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

    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"
