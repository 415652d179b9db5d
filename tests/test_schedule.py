"""Schedules: prefect.yaml parses into served deployments; a real Prefect server (started here,
stopped here) runs a scheduled deployment of a tiny-model pipeline to completion."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from tiny import make_snapshot, write_sst2_like

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_prefect_yaml_declares_scheduled_deployments_of_real_flows():
    from flows.serve import load_deployments, load_flow, schedule_of

    deps = {d["name"]: d for d in load_deployments(REPO / "prefect.yaml")}
    nightly = deps["nightly-fleet"]
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"
    assert nightly["work_pool"]["name"] == "peftops-process"
    assert schedule_of(nightly["schedules"][0]).schedule.cron == "0 2 * * *"
    for d in deps.values():
        assert load_flow(d["entrypoint"]).name in ("fleet", "adapter-pipeline", "retrain")


def test_serve_refuses_without_a_server(monkeypatch):
    import flows.serve
    from peftops.cli.main import app

    monkeypatch.setattr(flows.serve, "api_url", lambda: None)
    result = CliRunner().invoke(app, ["serve", "--file", str(REPO / "prefect.yaml")])
    assert result.exit_code == 1
    assert "ephemeral mode cannot schedule" in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # each was started in its own session (group) by this test
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _runs(api: str, deployment: str) -> list[dict]:
    dep = httpx.get(f"{api}/deployments/name/adapter-pipeline/{deployment}", timeout=10)
    if dep.status_code != 200:
        return []
    body = {"deployments": {"id": {"any_": [dep.json()["id"]]}}}
    return httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()


def test_served_deployment_runs_on_its_schedule(tmp_path):
    home = tmp_path / "home"
    make_snapshot(home)
    root = write_sst2_like(tmp_path / "data", n_train=32, n_dev=16)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"data_root": str(root), "train_size": 0, "dev_size": 0},
        "train": {"steps": 3, "batch_size": 8, "warmup_steps": 1},
        "methods": {"lora": {"lr": 2e-2, "r": 4, "alpha": 8, "dropout": 0.0}}}))
    deployments = tmp_path / "prefect.yaml"
    deployments.write_text(yaml.safe_dump({"deployments": [{
        "name": "tiny-every-5s", "entrypoint": "flows/fleet.py:adapter_pipeline",
        "parameters": {"task": "sst2", "methods": ["lora"], "params_file": str(params), "home": str(home)},
        "schedules": [{"interval": 5}]}]}))

    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1", "PREFECT_SERVER_UI_ENABLED": "false",
    })
    logs = tmp_path / "server.log"
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=logs.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    served = None
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 90:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, logs.read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("the Prefect server did not come up in 90 s")
        up_s = time.monotonic() - t0

        serve_log = tmp_path / "serve.log"
        served = subprocess.Popen(
            [str(BIN / "peftops"), "serve", "--file", str(deployments)], cwd=REPO,
            env={**env, "PREFECT_API_URL": api, "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
            stdout=serve_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        done = None
        while time.monotonic() - t0 < 240 and done is None:
            runs = _runs(api, "tiny-every-5s")
            bad = [r for r in runs if r["state_type"] in ("FAILED", "CRASHED")]
            assert not bad, serve_log.read_text()[-4000:]
            done = next((r for r in runs if r["state_type"] == "COMPLETED"), None)
            assert served.poll() is None, serve_log.read_text()[-4000:]
            time.sleep(1)
        assert done is not None, serve_log.read_text()[-4000:]
        print(f"\nserver healthy after {up_s:.1f}s; first scheduled run completed after {time.monotonic() - t0:.1f}s")
        assert done["auto_scheduled"] is True
        assert (home / "runs" / "sst2" / "lora" / "adapter").is_dir()
        # Ctrl-C stops the served process gracefully, and promptly
        t_int = time.monotonic()
        os.killpg(served.pid, signal.SIGINT)
        served.wait(timeout=30)
        assert time.monotonic() - t_int < 10, serve_log.read_text()[-2000:]
    finally:
        if served is not None:
            _stop(served)
        _stop(server)
    assert server.returncode is not None and (served is None or served.returncode is not None)
