"""The registry on S3 blobs (moto's server) and on PostgreSQL, and migration parity."""

import os
from pathlib import Path

import boto3
import pytest
from regtestlib import DIGEST, make_adapter, make_base

from registry import CorruptBlob, Registry, S3BlobStore
from registry.db import VERSION_TABLE, Base
from registry.engine import create_registry_engine, current_revision, head_revision, read_one


@pytest.fixture
def bucket(s3_endpoint):
    name = "peftops-registry-" + os.urandom(4).hex()
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def test_s3_blob_store_roundtrip_dedupe_and_corruption(tmp_path, s3_endpoint, bucket,
                                                        monkeypatch):
    monkeypatch.setenv("PEFTOPS_S3_ENDPOINT_URL", s3_endpoint)
    reg = Registry.open(f"sqlite:///{tmp_path / 'r.db'}", f"s3://{bucket}/adapters")
    assert isinstance(reg.blobs, S3BlobStore)
    reg.register_base(make_base(tmp_path / "base"), digest=DIGEST)
    a = make_adapter(tmp_path / "a", seed=1)
    v = reg.publish("t", a, base_digest=DIGEST, method="lora")
    reg.publish("u", a, base_digest=DIGEST, method="lora")  # same bytes: stored once
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == 2 and all(k.startswith("adapters/sha256/") for k in keys)
    out = reg.fetch("t", 1, dest=tmp_path / "out")
    assert (out / "adapter_model.safetensors").read_bytes() == \
        (a / "adapter_model.safetensors").read_bytes()

    # Tamper with the stored object: fetch must refuse it.
    key = reg.blobs.key(v.files["adapter_model.safetensors"]["sha256"])
    s3.put_object(Bucket=bucket, Key=key, Body=b"not the adapter")
    with pytest.raises(CorruptBlob):
        reg.fetch("t", 1, dest=tmp_path / "out2")
    assert not (tmp_path / "out2" / "adapter_model.safetensors").exists()
    # Publishing the good bytes again repairs it (size differs, so it is re-uploaded).
    reg.publish("t", a, base_digest=DIGEST, method="lora")
    reg.fetch("t", 1, dest=tmp_path / "out3")

    reg.delete("t", 1)
    assert reg.gc() == 0
    reg.delete("u", 1)
    assert reg.gc() == 2
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    reg.close()


def test_s3_put_refuses_bytes_that_do_not_match_their_digest(tmp_path, s3_endpoint, bucket):
    store = S3BlobStore(bucket, endpoint_url=s3_endpoint)
    f = tmp_path / "x"
    f.write_bytes(b"hello")
    with pytest.raises(CorruptBlob):
        store.put(f, "0" * 64)
    assert not store.exists("0" * 64)


def test_postgres_end_to_end(tmp_path, pg_url):
    reg = Registry.open(pg_url, (tmp_path / "blobs").as_uri())
    assert current_revision(reg.engine) == head_revision()
    reg.register_base(make_base(tmp_path / "base"), digest=DIGEST)
    vs = [reg.publish(f"t{i % 2}", make_adapter(tmp_path / f"a{i}", seed=i),
                      base_digest=DIGEST, method="lora", metrics={"acc": i / 10},
                      tags={"k": str(i % 3)}) for i in range(10)]
    assert reg.publish("t0", tmp_path / "a0", base_digest=DIGEST, method="lora") == vs[0]
    assert [v.version for v in reg.search(task="t1")] == [5, 4, 3, 2, 1]
    reg.set_alias("t1", "production", 3)
    assert reg.get("t1", alias="production").version == 3
    hi = reg.search(metric=("acc", ">=", 0.5), limit=2)
    assert [v.metrics["acc"] for v in hi] == [0.9, 0.8]
    nxt = reg.search(metric=("acc", ">=", 0.5), limit=2, page_token=hi.next_page_token)
    assert [v.metrics["acc"] for v in nxt] == [0.7, 0.6]
    assert len(reg.search(tag=("k", "0")).items) == 4
    assert [t.name for t in reg.list_tasks()] == ["t0", "t1"]
    first = reg.list_tasks(limit=1)  # one statement on PostgreSQL: the page joined to its aliases
    assert [(t.name, t.aliases) for t in first] == [("t0", {})]
    rest = reg.list_tasks(limit=1, page_token=first.next_page_token)
    assert [(t.name, t.aliases, t.n_versions) for t in rest] == [("t1", {"production": 3}, 5)]
    assert rest.next_page_token is None
    reg.delete("t0", 1)
    assert reg.gc() == 2  # weights and config of a0 (configs differ by their path field)
    reg.close()
    # A second open finds the schema at head and does not migrate again.
    Registry.open(pg_url, (tmp_path / "blobs").as_uri()).close()


def test_postgres_pooled_connections_ended_by_the_server_are_replaced(tmp_path, pg_url):
    """The pool checks a connection before use without a round trip (no pre-ping): one the
    server has ended is replaced, so the next read and publish succeed; a single-statement
    read runs in autocommit (no BEGIN and COMMIT round trips)."""
    reg = Registry.open(pg_url, (tmp_path / "blobs").as_uri())
    reg.register_base(make_base(tmp_path / "base"), digest=DIGEST)
    v1 = reg.publish("t", make_adapter(tmp_path / "a1", seed=1), base_digest=DIGEST,
                     method="lora")
    with read_one(reg.engine) as conn:  # the one pooled connection, reused next
        assert conn.connection.driver_connection.autocommit
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    admin = create_registry_engine(pg_url)
    with admin.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid}, 5000)").scalar_one()
    admin.dispose()
    assert reg.get("t", version=1) == v1
    with read_one(reg.engine) as conn:
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() != pid
    with reg.engine.connect() as conn:  # a write's connection, ended the same way
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    admin = create_registry_engine(pg_url)
    with admin.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid}, 5000)").scalar_one()
    admin.dispose()
    v2 = reg.publish("t", make_adapter(tmp_path / "a2", seed=2), base_digest=DIGEST,
                     method="lora")
    assert [v.version for v in reg.versions("t")] == [v2.version, 1]
    reg.close()


def _schema_diff(url: str):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = create_registry_engine(url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    return diff


def test_migrations_match_models_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    Registry.open(url, (tmp_path / "b").as_uri()).close()
    assert _schema_diff(url) == []


def test_migrations_match_models_postgres(tmp_path, pg_url):
    Registry.open(pg_url, (tmp_path / "b").as_uri()).close()
    assert _schema_diff(pg_url) == []


def test_registry_keeps_its_own_alembic_table(tmp_path):
    """Beside another tool's Alembic history in the same database, both stay intact."""
    import sqlite3

    db = tmp_path / "shared.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
    con.execute("INSERT INTO alembic_version VALUES ('someone_elses_head')")
    con.commit()
    Registry.open(f"sqlite:///{db}", (tmp_path / "b").as_uri()).close()
    assert con.execute("SELECT version_num FROM alembic_version").fetchall() == \
        [("someone_elses_head",)]
    assert con.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall() == \
        [(head_revision(),)]
    assert Path(db).is_file()
