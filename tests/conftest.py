"""Shared fixtures: offline, quiet environment; tiny pinned snapshots and task data built in code."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="peftops-prefect-")
os.environ.update({
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1",
    "PREFECT_HOME": _PREFECT_HOME, "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # a loaded 2-core machine is slow to start it
})
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PEFTOPS_HOME", None)
sys.path.insert(0, str(Path(__file__).parent))

from tiny import make_snapshot, write_sst2_like  # noqa: E402


@pytest.fixture
def tiny_home(tmp_path):
    """(state dir with a tiny pinned snapshot, data root with an SST-2-shaped task)."""
    home = tmp_path / "home"
    make_snapshot(home)
    root = write_sst2_like(tmp_path / "data", n_train=64, n_dev=32)
    return home, root


@pytest.fixture
def tiny_params(tiny_home):
    """Pipeline params sized for the tiny model (fast, and it learns)."""
    from peftops.config import DataConfig, PipelineParams, TrainConfig

    home, root = tiny_home
    return PipelineParams(
        data=DataConfig(data_root=str(root), train_size=0, dev_size=0),
        train=TrainConfig(steps=12, batch_size=8, warmup_steps=1, precision="fp32"),  # fp32 tolerances below
        methods={"lora": {"lr": 2e-2, "r": 4, "alpha": 8, "dropout": 0.0}, "full": {"lr": 5e-3}},
    )


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the session (it takes ~11 s to come up)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def real_snapshot(tmp_path_factory):
    """(state dir, snapshot) of the real Gemma 3 270M, built once per session from the GGUF package."""
    from peftops.model.snapshot import import_base
    from peftops.config import BaseConfig

    home = tmp_path_factory.mktemp("real-home")
    return home, import_base(BaseConfig(), home)
