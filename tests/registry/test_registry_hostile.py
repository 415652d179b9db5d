"""Hostile input: oversized or deeply nested JSON, unloadable safetensors, user text that
looks like markup, and HTTP clients that do not authenticate or send too much."""

import json
import re
import struct

import pytest
from fastapi.testclient import TestClient
from regtestlib import DIGEST, make_adapter
from sqlalchemy import update
from typer.testing import CliRunner

from registry import InvalidAdapter, InvalidArgument, db
from registry.api import create_app
from registry.cli import registry_app
from registry.engine import write_tx
from registry.jsonlimits import MAX_DEPTH

W = {"Authorization": "Bearer w-secret"}


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def _files(d):
    return [("files", (p.name, p.read_bytes(), "application/octet-stream"))
            for p in sorted(d.iterdir())]


# ---------------------------------------------------------------- JSON bounds
def test_deep_or_large_json_fields_are_refused_at_publish(reg, tmp_path):
    d = make_adapter(tmp_path / "a", seed=1)
    with pytest.raises(InvalidArgument, match=f"lineage is nested deeper than {MAX_DEPTH}"):
        reg.publish("t", d, base_digest=DIGEST, method="lora", lineage={"x": _nested(900)})
    with pytest.raises(InvalidArgument, match="tags is .* bytes of JSON; the limit is"):
        reg.publish("t", d, base_digest=DIGEST, method="lora",
                    tags={f"k{i}": "v" * 1000 for i in range(400)})
    cfg = json.loads((d / "adapter_config.json").read_text())
    (d / "adapter_config.json").write_text(json.dumps({**cfg, "pad": "x" * (30 << 20)}))
    with pytest.raises(InvalidAdapter, match="adapter_config.json is .* bytes; the limit is"):
        reg.publish("t", d, base_digest=DIGEST, method="lora")
    (d / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InvalidAdapter, match="adapter_config.json is nested deeper than"):
        reg.publish("t", d, base_digest=DIGEST, method="lora")
    assert reg.count_versions() == 0


def test_reads_survive_a_deep_document_already_stored(reg, tmp_path, monkeypatch):
    v = reg.publish("t", make_adapter(tmp_path / "a", seed=1), base_digest=DIGEST,
                    method="lora")
    deep = json.dumps({"x": _nested(900)})  # what older versions accepted
    with write_tx(reg.engine) as conn:
        conn.execute(update(db.versions).values(lineage=deep))
    got = reg.get("t", v.version)
    assert "unreadable" in got.lineage and got.to_dict()["version"] == v.version
    client = TestClient(create_app(reg, "w-secret"))
    for url in ("/versions", "/tasks/t/versions", "/tasks/t/versions/1", "/tasks/t/latest"):
        assert client.get(url).status_code == 200, url
    monkeypatch.setenv("COLUMNS", "200")
    args = ["--db", str(reg.engine.url), "--blobs", reg.blobs.uri]
    for cmd in (["list"], ["show", "t"], ["list", "--json"], ["show", "t", "--json"]):
        r = CliRunner().invoke(registry_app, cmd + args)
        assert r.exit_code == 0, (cmd, r.output)


# ---------------------------------------------------------------- safetensors
def _rewrite_header(path, edit):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    header, data = edit(header, data)
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)


def _first(header):
    return next(k for k in header if k != "__metadata__")


@pytest.mark.parametrize("edit, message", [
    (lambda h, d: ({**h, _first(h): {**h[_first(h)], "shape": [4.5, 32]}}, d),
     "dimensions must be non-negative integers"),
    (lambda h, d: (h, d + b"\0" * 16), "cover .* bytes of data but the file holds"),
    (lambda h, d: (h, d[:-4]), "cover .* bytes of data but the file holds"),
    (lambda h, d: ({**h, _first(h): {**h[_first(h)], "dtype": "F16"}}, d),
     "but its data_offsets span"),
    (lambda h, d: ({**h, _first(h): {**h[_first(h)], "dtype": "Q7"}}, d), "unknown dtype"),
])
def test_unloadable_safetensors_are_refused_in_one_line(reg, tmp_path, edit, message):
    d = make_adapter(tmp_path / "a", seed=2)
    _rewrite_header(d / "adapter_model.safetensors", edit)
    with pytest.raises(InvalidAdapter, match=message) as e:
        reg.publish("t", d, base_digest=DIGEST, method="lora")
    assert "\n" not in str(e.value)
    client = TestClient(create_app(reg, "w-secret"))
    r = client.post("/tasks/t/versions", files=_files(d),
                    data={"base_digest": DIGEST, "method": "lora"}, headers=W)
    assert r.status_code == 422 and r.json()["error"] == "InvalidAdapter"
    assert str(tmp_path) not in r.text and "/tmp" not in r.text  # no server paths
    assert reg.count_versions() == 0


# ---------------------------------------------------------------- HTTP
def test_auth_and_size_are_checked_before_the_body_is_read(reg, tmp_path, monkeypatch):
    from registry.api.routes import versions

    reached = []
    monkeypatch.setattr(versions.names, "task_name", lambda t: reached.append(t) or t)
    client = TestClient(create_app(reg, "w-secret", max_body_bytes=4096,
                                   auth_failures_per_minute=3))
    d = make_adapter(tmp_path / "a", seed=3)
    form = {"base_digest": DIGEST, "method": "lora"}
    r = client.post("/tasks/t/versions", files=_files(d), data=form)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = client.post("/tasks/t/versions", files=_files(d), data=form, headers=W)
    assert r.status_code == 413 and "over the limit of 4,096" in r.json()["detail"]
    for _ in range(2):  # three failures a minute allowed
        assert client.post("/gc", headers={"Authorization": "Bearer guess"}).status_code == 401
    r = client.post("/gc", headers={"Authorization": "Bearer guess"})
    assert r.status_code == 429 and r.headers["retry-after"]
    assert client.post("/gc", headers=W).status_code == 429  # the client, not the token
    assert reached == []  # no route ever ran


def test_read_token_guards_schema_and_docs_which_work_offline(reg):
    client = TestClient(create_app(reg, "w-secret", "r-secret"))
    R = {"Authorization": "Bearer r-secret"}
    assert client.get("/openapi.json").status_code == 401
    assert client.get("/docs").status_code == 401
    assert client.get("/openapi.json", headers=R).json()["info"]["title"]
    page = client.get("/docs", headers=R).text
    assert "/docs-assets/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/redoc").status_code == 401  # refused like /docs
    assert client.get("/redoc", headers={"Authorization": "Bearer wrong"}).status_code == 401
    redoc = client.get("/redoc", headers=R)
    assert redoc.status_code == 200 and "text/html" in redoc.headers["content-type"]
    assert 'spec-url="/openapi.json"' in redoc.text
    assert '<script src="/redoc-assets/redoc.standalone.js">' in redoc.text
    # every URL the page loads is on this server: no CDN, no Google fonts
    loaded = re.findall(r'(?:src|href|spec-url)="([^"]*)"', redoc.text)
    assert loaded and all(u.startswith("/") and not u.startswith("//") for u in loaded)
    assert "http://" not in redoc.text and "https://" not in redoc.text
    assert "fonts.googleapis" not in redoc.text and "cdn" not in redoc.text.lower()
    csp = redoc.headers["content-security-policy"]  # what the bundle itself would fetch
    assert "default-src 'self'" in csp and "img-src 'self' data:" in csp
    js = client.get("/redoc-assets/redoc.standalone.js")  # the assets are open, like /docs'
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert len(js.content) > 100_000 and b"Redoc" in js.content[:2000]
    assert client.get("/health").status_code == 200


def test_errors_never_show_server_paths(reg, tmp_path):
    v = reg.publish("t", make_adapter(tmp_path / "a", seed=4), base_digest=DIGEST,
                    method="lora")
    reg.blobs.delete(v.files["adapter_model.safetensors"]["sha256"])
    client = TestClient(create_app(reg, "w-secret"))
    r = client.get("/tasks/t/versions/1/files/adapter_model.safetensors")
    assert r.status_code == 404 and str(tmp_path) not in r.text and "file://" not in r.text


def test_downloads_and_exports_stream_from_disk(reg, tmp_path):
    reg.publish("t", make_adapter(tmp_path / "a", seed=5), base_digest=DIGEST, method="lora")
    client = TestClient(create_app(reg, "w-secret"))
    with client.stream("GET", "/tasks/t/versions/1/files/adapter_model.safetensors") as r:
        assert r.status_code == 200 and "content-length" in r.headers
        assert sum(len(c) for c in r.iter_bytes()) == int(r.headers["content-length"])
    with client.stream("POST", "/export", json={"items": [["t", 1]]}) as r:
        assert r.status_code == 200 and int(r.headers["content-length"]) > 0
    assert client.post("/export", json={"items": []}).status_code == 422
    assert client.get(f"/tasks/t/versions/{2**63}").status_code == 422


def test_serve_reads_tokens_from_files(tmp_path):
    from registry.cli import _token

    f = tmp_path / "token"
    f.write_text("s3cret\n")
    assert _token(None, f, "write token") == "s3cret"
    assert _token("given", None, "write token") == "given"
    f.write_text("")
    with pytest.raises(InvalidArgument, match="is empty"):
        _token(None, f, "write token")


# ---------------------------------------------------------------- CLI text
def test_cli_prints_user_text_literally(reg, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    reg.publish("t", make_adapter(tmp_path / "a", seed=6), base_digest=DIGEST, method="lora",
                tags={"note": "[/] :x: [bold]"}, lineage={"why": "[/red]"})
    args = ["--db", str(reg.engine.url), "--blobs", reg.blobs.uri]
    for cmd in (["list"], ["show", "t"], ["tasks"], ["tag", "t", "1", "k", "[/]"]):
        r = CliRunner().invoke(registry_app, cmd + args)
        assert r.exit_code == 0, (cmd, r.output)
    out = CliRunner().invoke(registry_app, ["show", "t"] + args).output
    assert "[/] :x: [bold]" in out and "\u274c" not in out
    r = CliRunner().invoke(registry_app, ["show", "[/]"] + args)
    assert r.exit_code == 1 and "[/]" in r.output and "Traceback" not in r.output
