"""A private Ray cluster (``fleet.address: ""``, the fleet bench's) starts its own processes with
the settings that keep them off the workers' cores: read back from the running processes."""

from __future__ import annotations

import os

import pytest

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")


def _children_env(marker: str) -> dict[str, str]:
    for proc in psutil.Process().children(recursive=True):
        try:
            if marker in " ".join(proc.cmdline()):
                return proc.environ()
        except psutil.Error:
            continue
    raise AssertionError(f"no process of the private cluster runs {marker}")


def test_a_private_cluster_starts_its_log_monitor_and_raylet_lean(monkeypatch):
    from flows.ray_fleet import PRIVATE_CLUSTER_ENV, _connect
    from peftops.config import FleetConfig

    for k in PRIVATE_CLUSTER_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    assert not ray.is_initialized()
    assert _connect(FleetConfig(runner="ray", address="")) is True
    try:
        monitor, raylet = _children_env("log_monitor.py"), _children_env("raylet/raylet")
        assert monitor["RAY_LOG_MONITOR_MANY_FILES_THRESHOLD"] == "0"
        assert raylet["RAY_enable_metrics_collection"] == "0"
    finally:
        ray.shutdown()
        for k in PRIVATE_CLUSTER_ENV:  # _connect set them in this process: not monkeypatch's to undo
            os.environ.pop(k, None)


def test_a_users_own_value_wins(monkeypatch):
    from flows.ray_fleet import PRIVATE_CLUSTER_ENV, _connect
    from peftops.config import FleetConfig

    monkeypatch.setenv("RAY_enable_metrics_collection", "1")
    monkeypatch.delenv("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", raising=False)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    assert _connect(FleetConfig(runner="ray", address="")) is True
    try:
        assert _children_env("raylet/raylet")["RAY_enable_metrics_collection"] == "1"
    finally:
        ray.shutdown()
        os.environ.pop("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", None)
    assert set(PRIVATE_CLUSTER_ENV) == {"RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "RAY_enable_metrics_collection"}
