"""Faults: dead or hung dependencies, crashed publishers, damaged stored objects.

Every wait here is bounded: timeouts of a second or two, a handful of killed processes
(PEFTOPS_FAULT_KILLS raises the count for a full-size run).
"""

import base64
import hashlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
from regtestlib import DIGEST, make_adapter, make_base
from typer.testing import CliRunner

from registry import Registry, S3BlobStore
from registry.cli import registry_app
from registry.errors import StorageUnavailable

HERE = Path(__file__).resolve().parent


@pytest.fixture
def bucket(s3_endpoint):
    name = "peftops-faults-" + os.urandom(4).hex()
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def _registry_on(tmp_path, store):
    reg = Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blob_store=store)
    reg.register_base(make_base(tmp_path / "base"), digest=DIGEST, name="tiny")
    return reg


# ---------------------------------------------------------------- S3 down or hung
def test_s3_endpoint_down_is_one_line_naming_it(tmp_path, s3_endpoint):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    store = S3BlobStore("dead-bucket", "p", endpoint_url=url, connect_timeout=1,
                        read_timeout=1, max_attempts=2)
    reg = _registry_on(tmp_path, store)
    t = time.monotonic()
    with pytest.raises(StorageUnavailable, match=f"S3 endpoint {url}") as e:
        reg.publish("t", make_adapter(tmp_path / "a"), base_digest=DIGEST, method="lora")
    assert time.monotonic() - t < 15 and "\n" not in str(e.value)
    assert reg.count_versions() == 0


def test_s3_endpoint_that_never_answers_times_out(tmp_path, s3_endpoint):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)  # the kernel accepts connections; nothing ever answers
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    url = "http://127.0.0.1:%d" % server.getsockname()[1]
    try:
        store = S3BlobStore("hung-bucket", "p", endpoint_url=url, connect_timeout=1,
                            read_timeout=1, max_attempts=2)
        reg = _registry_on(tmp_path, store)
        t = time.monotonic()
        with pytest.raises(StorageUnavailable, match="S3 endpoint .* failed to"):
            reg.publish("t", make_adapter(tmp_path / "a"), base_digest=DIGEST, method="lora")
        assert time.monotonic() - t < 20
        assert reg.count_versions() == 0
    finally:
        stop.set()
        th.join(5)
        for c in held:
            c.close()
        server.close()


def test_s3_object_without_checksum_is_verified_and_repaired(tmp_path, s3_endpoint, bucket):
    store = S3BlobStore(bucket, "p", endpoint_url=s3_endpoint)
    reg = _registry_on(tmp_path, store)
    d = make_adapter(tmp_path / "a", seed=7)
    v = reg.publish("t", d, base_digest=DIGEST, method="lora")
    sha = v.files["adapter_model.safetensors"]["sha256"]
    good = (d / "adapter_model.safetensors").read_bytes()
    bad = bytes([good[0] ^ 1]) + good[1:]  # same size, no checksum kept by the server
    store.client.put_object(Bucket=bucket, Key=store.key(sha), Body=bad)
    assert not store.intact(sha)
    with pytest.raises(Exception, match="run publish again to repair it"):
        reg.fetch("t", 1, dest=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    reg.publish("t", d, base_digest=DIGEST, method="lora")  # repairs
    assert store.intact(sha)
    reg.fetch("t", 1, dest=tmp_path / "out")
    assert hashlib.sha256((tmp_path / "out" / "adapter_model.safetensors").read_bytes()
                          ).hexdigest() == sha
    assert base64.b64decode(store._b64(sha)).hex() == sha


# ---------------------------------------------------------------- SQLite locked
def test_sqlite_locked_by_a_writer_is_a_clear_error_within_the_timeout(tmp_path):
    db_path = tmp_path / "r.db"
    reg = Registry.open(f"sqlite:///{db_path}", (tmp_path / "blobs").as_uri(),
                        busy_timeout_s=0.5)
    reg.register_base(make_base(tmp_path / "base"), digest=DIGEST, name="tiny")
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's long write
    try:
        t = time.monotonic()
        with pytest.raises(StorageUnavailable, match="is locked by another writer"):
            reg.publish("t", make_adapter(tmp_path / "a"), base_digest=DIGEST, method="lora")
        with pytest.raises(StorageUnavailable, match="r.db is locked"):
            reg.set_tag("t", 1, "k", "v")
        assert time.monotonic() - t < 10
        from fastapi.testclient import TestClient

        from registry.api import create_app

        r = TestClient(create_app(reg, "w")).post("/gc", headers={"Authorization": "Bearer w"})
        assert r.status_code == 503 and r.json()["error"] == "StorageUnavailable"
        assert str(tmp_path) not in r.text
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert reg.count_versions() == 0


# ---------------------------------------------------------------- crashed publishers
PUBLISHER = r"""
import sys, random
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from regtestlib import DIGEST, make_adapter
from registry import Registry
db, blobs, work, seed = sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])
reg = Registry.open(db, blobs)
print("ready", flush=True)
for i in range(10_000):
    d = make_adapter(work / f"a{i}", seed=seed * 100_000 + i, r=8)
    reg.publish(f"t{i % 3}", d, base_digest=DIGEST, method="lora")
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def kill_db_url(request, tmp_path):
    """The killed publishers' database: SQLite, and PostgreSQL (where a publish is one call
    of registry_publish(), migration 0003)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'r.db'}"
    return request.getfixturevalue("pg_url")


def test_kill_9_publishers_then_gc_leaves_a_clean_registry(tmp_path, kill_db_url):
    kills = int(os.environ.get("PEFTOPS_FAULT_KILLS", "3"))
    db_url, blobs = kill_db_url, (tmp_path / "blobs").as_uri()
    with Registry.open(db_url, blobs) as reg:
        reg.register_base(make_base(tmp_path / "base"), digest=DIGEST, name="tiny")
    rng = random.Random(0)
    for k in range(kills):
        p = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(HERE), db_url, blobs,
                              str(tmp_path / f"w{k}"), str(k)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert p.stdout.readline().strip() == b"ready"
            time.sleep(rng.uniform(0.05, 0.6))
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)
    # A leftover temp file as a killed writer leaves it (mid-write, old).
    sub = tmp_path / "blobs" / "sha256" / "00"
    sub.mkdir(parents=True, exist_ok=True)
    stray = sub / f".tmp-{os.getpid()}-deadbeefdeadbeef.part"
    stray.write_bytes(b"half a blob")
    with Registry.open(db_url, blobs) as reg:
        assert f"00/{stray.name}" in reg.verify()["temp"]
        r = CliRunner().invoke(registry_app, ["verify", "--db", db_url, "--blobs", blobs])
        assert r.exit_code == 1 and "temp:" in r.output
        reg.gc(temp_grace_s=0)
        report = reg.verify()
        assert report == {"missing": [], "corrupt": [], "unreferenced": [], "temp": []}, report
        n = reg.count_versions()
        for t in reg.list_tasks(limit=10):  # every row has its blobs, intact
            for v in reg.versions(t.name, limit=1000):
                reg.fetch(v.task, v.version, dest=tmp_path / "check" / v.name)
    r = CliRunner().invoke(registry_app, ["verify", "--db", db_url, "--blobs", blobs, "--json"])
    assert r.exit_code == 0, r.output
    print(f"\nfaults: {kills} publishers killed with SIGKILL mid-run, {n} versions committed, every one "
          "fetched intact; verify clean after gc")
