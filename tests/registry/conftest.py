import os
import secrets
import socket

import pytest

from regtestlib import DIGEST, make_base

from registry import Registry

PG_ADMIN = os.environ.get("PEFTOPS_TEST_PG_ADMIN_URL",
                          "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session", autouse=True)
def _offline_env():
    """No telemetry or hub access from libraries the tests load (restored afterwards)."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                     "DO_NOT_TRACK": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
            mp.setenv(k, os.environ.get(k, v))
        yield


@pytest.fixture
def base_dir(tmp_path):
    return make_base(tmp_path / "base")


@pytest.fixture
def reg(tmp_path, base_dir):
    r = Registry.open(f"sqlite:///{tmp_path / 'reg.db'}", (tmp_path / "blobs").as_uri())
    r.register_base(base_dir, digest=DIGEST, name="tiny")
    yield r
    r.close()


def _pg_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def pg_urls():
    """Makes fresh PostgreSQL databases for one test (each call one more), dropped afterwards."""
    if not _pg_up():
        pytest.skip("PostgreSQL is not listening on 127.0.0.1:5432")
    import psycopg

    made = []

    def make() -> str:
        name = f"peftops_registry_test_{secrets.token_hex(4)}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return PG_ADMIN.rsplit("/", 1)[0] + "/" + name

    try:
        yield make
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            for name in made:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_urls):
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    return pg_urls()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request, tmp_path):
    """An empty registry database on each backend in turn (a test runs once per backend)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'r.db'}"
    return request.getfixturevalue("pg_urls")()


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server over HTTP on 127.0.0.1 (a real socket, real boto3 calls)."""
    from moto.server import ThreadedMotoServer

    dummy = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
             "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in dummy}
    os.environ.update(dummy)  # never real credentials: the server is local
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
