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


def test_the_ray_cluster_matches_the_stack():
    """KubeRay's CRDs are not in kubernetes-validate's schemas: check the RayCluster's structure."""
    rc = yaml.safe_load((REPO / "infra" / "k8s" / "ray" / "raycluster.yaml").read_text())
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    assert rc["metadata"]["namespace"] == "peftops"
    head = rc["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in rc["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        c = g["template"]["spec"]["containers"][0]
        assert {"configMapRef": {"name": "peftops-config"}} in c["envFrom"]
        assert {"secretRef": {"name": "peftops-secrets"}} in c["envFrom"]
        vols = g["template"]["spec"]["volumes"]
        assert vols[0]["persistentVolumeClaim"]["claimName"] == "peftops-state-shared"
        assert float(c["resources"]["requests"]["cpu"]) == float(g["rayStartParams"]["num-cpus"])
    gpu = groups["gpu"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1 == int(
        groups["gpu"]["rayStartParams"]["num-gpus"])
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    pvc = yaml.safe_load((REPO / "infra" / "k8s" / "ray-state.yaml").read_text())
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    compose = yaml.safe_load((REPO / "infra" / "docker-compose.yml").read_text())
    assert {"ray-head", "ray-worker"} <= set(compose["services"])
    assert compose["services"]["prefect-worker"]["environment"]["RAY_ADDRESS"] == "ray-head:6379"
