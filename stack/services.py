"""Start, stop and inspect the fleet's shared services on one machine, loopback only.

``up`` creates the stack's PostgreSQL databases, starts moto's S3 server (and its buckets), the
MLflow tracking server, the Prefect API server and a Ray head as child processes (each in its own
process group, logs under ``<home>/stack/logs``), waits until each answers its health check, and
writes ``<home>/stack.json`` (processes, ports, URLs) and ``<home>/stack.env`` (the environment a
fleet and its workers need). ``down`` stops those process groups and drops the databases: the S3
endpoint keeps its objects in memory, so registry metadata and MLflow runs must not outlive it.
``status`` says which services are up.

Ray's head gets ``workers x cpus_per_worker`` CPUs: with tasks asking for ``cpus_per_worker``
each, Ray runs ``workers`` worker processes at a time (one task each). Ray's own gRPC servers
listen on every interface (Ray 2.60 has no bind option); the stack advertises and uses only
127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

HOST = "127.0.0.1"
STATE_FILE = "stack.json"
ENV_FILE = "stack.env"
SERVICES = ("s3", "mlflow", "prefect", "ray")
DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
         "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
         # one machine: Ray advertises the loopback address instead of the host's
         "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
         # said explicitly, for the head and every client alike: left unset, Ray turns token auth on
         # whenever ~/.ray/auth_token exists (any earlier local ray.init writes one), and a client
         # without the token is then refused
         "RAY_AUTH_MODE": "disabled"}


class StackError(RuntimeError):
    """A service did not come up (or the stack is in a state that forbids the request)."""


@dataclass(frozen=True)
class StackSpec:
    """What ``up`` starts. Port 0 picks a free one."""

    home: str
    postgres: str = f"postgresql://postgres@{HOST}:5432/postgres"  # an existing server, to create databases on
    name: str = "peftops"  # prefix of the databases and buckets
    workers: int = 2
    cpus_per_worker: float = 1.0
    s3_port: int = 0
    mlflow_port: int = 0
    prefect_port: int = 0
    ray_port: int = 0
    timeout_s: float = 120.0  # per service health check

    def databases(self) -> dict[str, str]:
        return {s: f"{self.name}_{s}" for s in ("registry", "mlflow", "prefect")}

    def buckets(self) -> dict[str, str]:
        return {"registry": f"{self.name}-registry", "mlflow": f"{self.name}-mlflow"}


def _bin(name: str) -> str:
    """A program installed beside this interpreter (the venv's), else on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise StackError(f"{name}: not installed (pip install 'peftops[test,ray]')")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _pg_url(base: str, db: str, driver: str) -> str:
    """``base`` (a postgresql:// URL) pointing at database ``db`` with the given SQLAlchemy driver."""
    from urllib.parse import urlsplit, urlunsplit

    u = urlsplit(base)
    return urlunsplit((f"postgresql+{driver}" if driver else "postgresql", u.netloc, f"/{db}", u.query, ""))


def _admin(url: str, statements: list[str]) -> None:
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            for sql in statements:
                conn.execute(sql)
    except psycopg.OperationalError as err:
        raise StackError(f"PostgreSQL at {url}: {str(err).strip().splitlines()[0]}") from None


def _create_databases(spec: StackSpec) -> None:
    import psycopg

    with psycopg.connect(spec.postgres, autocommit=True, connect_timeout=10) as conn:
        have = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        for db in spec.databases().values():
            if db not in have:
                conn.execute(f'CREATE DATABASE "{db}"')


def _drop_databases(postgres: str, databases: list[str]) -> None:
    _admin(postgres, [f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)' for db in databases])


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return 200 <= r.status < 500
    except urllib.error.HTTPError as err:
        return err.code < 500
    except (OSError, ValueError):
        return False


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=2):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _tail(path: Path, n: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _wait(name: str, proc: dict[str, Any], healthy: Callable[[], bool], timeout: float) -> None:
    """Poll ``healthy`` until it holds, the process exits, or ``timeout`` passes (bounded)."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    while time.monotonic() < deadline:
        if healthy():
            return
        if not _alive(proc["pid"]):
            raise StackError(f"{name} exited during start-up; its log ({proc['log']}):\n{_tail(Path(proc['log']))}")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
    raise StackError(f"{name} not healthy after {timeout:.0f}s; its log ({proc['log']}):\n{_tail(Path(proc['log']))}")


def _spawn(name: str, argv: list[str], env: dict[str, str], logs: Path) -> dict[str, Any]:
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        p = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)  # its own process group: down stops all it started
    return {"pid": p.pid, "argv": argv, "log": str(log)}


def read_state(home: str | Path) -> dict[str, Any] | None:
    path = Path(home) / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def up(spec: StackSpec) -> dict[str, Any]:
    """Start the stack (refused when one is already up for this state dir); returns its state."""
    home = Path(spec.home).resolve()
    current = read_state(home)
    if current is not None and any(s["up"] for s in status(home)["services"].values()):
        raise StackError(f"a stack is already up for {home} (peftops stack down first)")
    root = home / "stack"
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    _create_databases(spec)
    dbs, buckets = spec.databases(), spec.buckets()
    ports = {"s3": spec.s3_port or _free_port(), "mlflow": spec.mlflow_port or _free_port(),
             "prefect": spec.prefect_port or _free_port(), "ray": spec.ray_port or _free_port()}
    s3 = f"http://{HOST}:{ports['s3']}"
    # Ray keeps Unix sockets in its temp dir: the path must stay short (~100 characters).
    ray_tmp = tempfile.mkdtemp(prefix="peftops-ray-", dir="/tmp")
    env = {**os.environ, **QUIET, **DUMMY_AWS}
    state: dict[str, Any] = {"spec": asdict(spec), "home": str(home), "ports": ports, "databases": dbs,
                             "buckets": buckets, "ray_temp_dir": ray_tmp, "processes": {}, "started": time.time()}
    procs = state["processes"]
    path = home / STATE_FILE

    def save() -> None:
        path.write_text(json.dumps(state, indent=2) + "\n")

    try:
        procs["s3"] = _spawn("s3", [_bin("moto_server"), "-H", HOST, "-p", str(ports["s3"])], env, logs)
        save()
        mlflow_env = {**env, "MLFLOW_S3_ENDPOINT_URL": s3}
        procs["mlflow"] = _spawn("mlflow", [
            _bin("mlflow"), "server", "--host", HOST, "--port", str(ports["mlflow"]), "--workers", "1",
            "--backend-store-uri", _pg_url(spec.postgres, dbs["mlflow"], "psycopg"),
            "--artifacts-destination", f"s3://{buckets['mlflow']}/artifacts"], mlflow_env, logs)
        prefect_env = {**env, "PREFECT_HOME": str(root / "prefect"),
                       "PREFECT_API_DATABASE_CONNECTION_URL": _pg_url(spec.postgres, dbs["prefect"], "asyncpg"),
                       "PREFECT_SERVER_API_HOST": HOST, "PREFECT_SERVER_API_PORT": str(ports["prefect"])}
        prefect_env.pop("PREFECT_API_URL", None)
        procs["prefect"] = _spawn("prefect", [_bin("prefect"), "server", "start", "--host", HOST,
                                              "--port", str(ports["prefect"])], prefect_env, logs)
        cpus = spec.workers * spec.cpus_per_worker
        procs["ray"] = _spawn("ray", [
            _bin("ray"), "start", "--head", "--block", "--node-ip-address", HOST, "--port", str(ports["ray"]),
            "--num-cpus", f"{cpus:g}", "--include-dashboard", "false", "--temp-dir", ray_tmp,
            "--disable-usage-stats"], env, logs)
        save()
        _wait("s3", procs["s3"], lambda: _http_ok(f"{s3}/moto-api/"), spec.timeout_s)
        _make_buckets(s3, list(buckets.values()))
        ray_log = Path(procs["ray"]["log"])
        _wait("ray", procs["ray"], lambda: _port_open(ports["ray"]) and "Ray runtime started" in _tail(ray_log, 200),
              spec.timeout_s)
        _wait("mlflow", procs["mlflow"], lambda: _http_ok(f"http://{HOST}:{ports['mlflow']}/health"), spec.timeout_s)
        _wait("prefect", procs["prefect"], lambda: _http_ok(f"http://{HOST}:{ports['prefect']}/api/health"),
              spec.timeout_s)
    except BaseException:
        _stop(state)
        _drop_databases(spec.postgres, list(dbs.values()))
        path.unlink(missing_ok=True)
        raise
    state["env"] = stack_env(state)
    save()
    (home / ENV_FILE).write_text("".join(f"{k}={v}\n" for k, v in state["env"].items()))
    return state


def _make_buckets(endpoint: str, names: list[str]) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=DUMMY_AWS["AWS_DEFAULT_REGION"],
                      aws_access_key_id=DUMMY_AWS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=DUMMY_AWS["AWS_SECRET_ACCESS_KEY"])
    for name in names:
        s3.create_bucket(Bucket=name)


def stack_env(state: dict[str, Any]) -> dict[str, str]:
    """The environment that points a fleet, its workers and the CLI at the stack."""
    ports, spec = state["ports"], state["spec"]
    s3 = f"http://{HOST}:{ports['s3']}"
    return {
        "PEFTOPS_HOME": state["home"],
        "PEFTOPS_REGISTRY_DB": _pg_url(spec["postgres"], state["databases"]["registry"], "psycopg"),
        "PEFTOPS_REGISTRY_BLOBS": f"s3://{state['buckets']['registry']}/blobs",
        "PEFTOPS_S3_ENDPOINT_URL": s3,
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{ports['mlflow']}",
        "MLFLOW_S3_ENDPOINT_URL": s3,
        "PREFECT_API_URL": f"http://{HOST}:{ports['prefect']}/api",
        "RAY_ADDRESS": f"{HOST}:{ports['ray']}",
        **QUIET, **DUMMY_AWS,
    }


def _stop(state: dict[str, Any], timeout: float = 8.0) -> None:
    """SIGTERM each service's process group, then SIGKILL what is left after ``timeout`` (Ray's agents
    outlive a SIGTERM of their group)."""
    groups = [p["pid"] for p in state.get("processes", {}).values()]
    for pid in groups:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_group_alive(pid) for pid in groups):
        time.sleep(0.2)
    for pid in groups:
        if _group_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    for pid in groups:
        _alive(pid)  # reap our own children
    tmp = state.get("ray_temp_dir")
    if tmp and Path(tmp).name.startswith("peftops-ray-"):
        shutil.rmtree(tmp, ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies waiting to be reaped do not count)."""
    _alive(pgid)
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp
            return True
    return False


def down(home: str | Path) -> bool:
    """Stop the stack of ``home`` and drop its databases; False when none was recorded."""
    home = Path(home).resolve()
    state = read_state(home)
    if state is None:
        return False
    _stop(state)
    _drop_databases(state["spec"]["postgres"], list(state["databases"].values()))
    (home / STATE_FILE).unlink(missing_ok=True)
    (home / ENV_FILE).unlink(missing_ok=True)
    return True


def status(home: str | Path) -> dict[str, Any]:
    """Each service: its pid, whether the process lives and answers its health check, its URL."""
    state = read_state(Path(home).resolve())
    if state is None:
        return {"up": False, "services": {}}
    ports = state["ports"]
    checks = {"s3": lambda: _http_ok(f"http://{HOST}:{ports['s3']}/moto-api/"),
              "mlflow": lambda: _http_ok(f"http://{HOST}:{ports['mlflow']}/health"),
              "prefect": lambda: _http_ok(f"http://{HOST}:{ports['prefect']}/api/health"),
              "ray": lambda: _port_open(ports["ray"])}
    urls = {"s3": f"http://{HOST}:{ports['s3']}", "mlflow": f"http://{HOST}:{ports['mlflow']}",
            "prefect": f"http://{HOST}:{ports['prefect']}/api", "ray": f"{HOST}:{ports['ray']}"}
    services = {}
    for name, proc in state["processes"].items():
        alive = _group_alive(proc["pid"])
        services[name] = {"pid": proc["pid"], "up": bool(alive and checks[name]()), "url": urls[name],
                          "log": proc["log"]}
    return {"up": bool(services) and all(s["up"] for s in services.values()), "services": services,
            "databases": state["databases"], "env_file": str(Path(state["home"]) / ENV_FILE)}


def load_env(home: str | Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Put ``<home>/stack.env``'s variables into ``environ`` (default ``os.environ``) where not set
    already; returns what it set (nothing when there is no stack file)."""
    environ = os.environ if environ is None else environ
    path = Path(home) / ENV_FILE
    if not path.exists():
        return {}
    added = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            if k not in environ:
                environ[k] = added[k] = v
    return added
