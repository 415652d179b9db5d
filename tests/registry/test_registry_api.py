"""The HTTP API through FastAPI's TestClient (real app, real registry)."""

import io
import json
import tarfile

import pytest
from fastapi.testclient import TestClient
from regtestlib import DIGEST, make_adapter

from registry.api import create_app

W = {"Authorization": "Bearer w-secret"}


def _files(d):
    return [("files", (p.name, p.read_bytes(), "application/octet-stream"))
            for p in sorted(d.iterdir())]


@pytest.fixture
def client(reg):
    return TestClient(create_app(reg, write_token="w-secret"))


def _publish(client, tmp_path, task="sst2", seed=1, headers=W, **form):
    d = make_adapter(tmp_path / f"{task}-{seed}", seed=seed)
    data = {"base_digest": DIGEST, "method": "lora", **form}
    return client.post(f"/tasks/{task}/versions", files=_files(d), data=data, headers=headers)


def test_publish_and_read_over_http(client, tmp_path):
    r = _publish(client, tmp_path, metrics=json.dumps({"acc": 0.9}),
                 tags=json.dumps({"team": "nlp"}), aliases=json.dumps(["staging"]),
                 lineage=json.dumps({"git_commit": "abc"}))
    assert r.status_code == 201, r.text
    v = r.json()
    assert (v["task"], v["version"], v["aliases"], v["metrics"]) == \
        ("sst2", 1, ["staging"], {"acc": 0.9})
    again = _publish(client, tmp_path)
    assert again.status_code == 200 and again.json()["version"] == 1
    assert _publish(client, tmp_path, seed=2).json()["version"] == 2

    assert client.get("/tasks/sst2/versions/1").json()["adapter_id"] == v["adapter_id"]
    assert client.get("/tasks/sst2/aliases/staging").json()["version"] == 1
    assert client.get("/tasks/sst2/latest").json()["version"] == 2
    assert [x["version"] for x in client.get("/tasks/sst2/versions").json()["items"]] == [2, 1]
    assert [x["version"] for x in client.get(
        "/versions", params={"metric": "acc>=0.5"}).json()["items"]] == [1]
    assert len(client.get("/versions", params={"tag": "team=nlp"}).json()["items"]) == 1
    p = client.get("/versions", params={"limit": 1}).json()
    assert p["next_page_token"]
    p2 = client.get("/versions", params={"limit": 1, "page_token": p["next_page_token"]})
    assert p2.json()["items"][0]["version"] == 1
    tasks = client.get("/tasks").json()["items"]
    assert tasks[0]["name"] == "sst2" and tasks[0]["aliases"] == {"staging": 1}
    body = client.get("/tasks/sst2/versions/1/files/adapter_model.safetensors")
    assert body.status_code == 200
    assert body.content == (tmp_path / "sst2-1" / "adapter_model.safetensors").read_bytes()
    assert client.get("/bases").json()[0]["digest"] == DIGEST

    tar = client.post("/export", json={"items": [["sst2", 1], ["sst2", 2]]})
    assert tar.status_code == 200
    names = tarfile.open(fileobj=io.BytesIO(tar.content)).getnames()
    assert "sst2-v1/adapter_config.json" in names and "lora_modules.txt" in names


def test_writes_need_the_token(client, tmp_path):
    assert _publish(client, tmp_path, headers={}).status_code == 401
    assert _publish(client, tmp_path, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert _publish(client, tmp_path).status_code == 201
    assert client.put("/tasks/sst2/aliases/production", json={"version": 1}).status_code == 401
    assert client.post("/gc").status_code == 401
    assert client.delete("/tasks/sst2/versions/1").status_code == 401
    r = client.put("/tasks/sst2/aliases/production", json={"version": 1}, headers=W)
    assert r.status_code == 200 and r.json()["aliases"] == ["production"]
    assert client.delete("/tasks/sst2/versions/1", headers=W).status_code == 409
    assert client.delete("/tasks/sst2/aliases/production", headers=W).status_code == 204
    r = client.put("/tasks/sst2/versions/1/tags/review/status", json={"value": "ok"},
                   headers=W)
    assert r.json()["tags"] == {"review/status": "ok"}
    assert client.post("/tasks/sst2/versions/1/deprecate", headers=W).json()["status"] == \
        "deprecated"
    assert client.delete("/tasks/sst2/versions/1", headers=W).status_code == 204
    assert client.post("/gc", headers=W).json() == {"removed": 2}
    assert client.get("/tasks/sst2/versions/1").status_code == 404


def test_read_token_gates_reads(reg, tmp_path):
    c = TestClient(create_app(reg, write_token="w-secret", read_token="r-secret"))
    assert c.get("/tasks").status_code == 401
    assert c.get("/tasks", headers={"Authorization": "Bearer r-secret"}).status_code == 200
    assert c.get("/tasks", headers=W).status_code == 200
    assert c.get("/health").status_code == 200
    no_writes = TestClient(create_app(reg, write_token=None))
    assert _publish(no_writes, tmp_path).status_code == 403


def test_errors_are_typed_json(client, tmp_path):
    r = _publish(client, tmp_path, task="..evil")
    assert r.status_code == 422 and r.json()["error"] == "InvalidName"
    d = make_adapter(tmp_path / "a", seed=1)
    bad = _files(d) + [("files", ("../escape", b"x", "application/octet-stream"))]
    r = client.post("/tasks/t/versions", files=bad,
                    data={"base_digest": DIGEST, "method": "lora"}, headers=W)
    assert r.status_code == 422 and r.json()["error"] == "InvalidName"
    r = _publish(client, tmp_path, base_digest="sha256:" + "0" * 64)
    assert r.status_code == 404 and "register_base" in r.json()["detail"]
    wrong = make_adapter(tmp_path / "w", seed=1, extra_config={"target_modules": ["nope"]})
    r = client.post("/tasks/t/versions", files=_files(wrong),
                    data={"base_digest": DIGEST, "method": "lora"}, headers=W)
    assert r.status_code == 422 and r.json()["error"] == "LintError" and r.json()["problems"]
    assert client.get("/versions", params={"metric": "acc~1"}).status_code == 422
    assert client.get("/tasks/none/versions/1").json()["error"] == "NotFound"


def test_openapi_schema(client):
    schema = client.get("/openapi.json").json()
    assert "/tasks/{task}/versions" in schema["paths"]
    assert "post" in schema["paths"]["/tasks/{task}/versions"]
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
