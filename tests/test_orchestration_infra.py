"""Deployment files checked offline: compose structure, Kubernetes schemas, the retrain workflow."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_compose_declares_the_stack():
    compose = yaml.safe_load((REPO / "infra" / "docker-compose.yml").read_text())
    assert {"postgres", "minio", "prefect-server", "prefect-worker", "mlflow", "registry-api"} <= set(compose["services"])
    worker = compose["services"]["prefect-worker"]
    assert "prefect worker start --pool peftops-process" in " ".join(worker["command"])
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    pools = {d["work_pool"]["name"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    assert pools == {"peftops-process"}


def test_kubernetes_manifests_validate_against_1_32():
    exe = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("kubernetes-validate is not installed (pip install '.[test]')")
    files = sorted(str(p) for p in (REPO / "infra" / "k8s").glob("*.yaml"))
    out = subprocess.run([exe, "-k", "1.32", "--strict", *files], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_retrain_workflow_triggers_on_data_params_and_manifest():
    wf = yaml.safe_load((REPO / ".github" / "workflows" / "retrain.yml").read_text())
    on = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads the key `on` as true
    assert {"data/**.dvc", "params.yaml", "peftops/data/tasks.yaml"} <= set(on["push"]["paths"])
    steps = " ".join(s.get("run", "") for s in wf["jobs"]["retrain"]["steps"])
    assert "peftops retrain --since" in steps and "dvc pull" in steps
