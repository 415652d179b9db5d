# python bench/registry_bench.py --backend both
"""Adapter-registry benchmark: our registry at 10k and 100k versions on SQLite and on
PostgreSQL, vs MLflow's Model Registry at 10k on the same backend, plus 8 concurrent publishers.

Each PostgreSQL size gets a database of its own (created fresh, dropped at the end); blobs
are on the local file store on both backends. MLflow runs on SQLite (its embedded default)
and, when PostgreSQL is benched, in a database of its own on the same server: PostgreSQL's
targets are against that run, and its ratios against MLflow on SQLite are printed beside.

Synthesis uses bulk inserts (it is not what is measured); every measured query goes
through the public Python API (ours) or MlflowClient (theirs), and publish throughput goes
through the real publish path (hash, lint, blob upload + verify, one transaction), one call
per adapter and, separately, in batches through publish_many (one transaction per batch).
After MLflow's runs, the publish rates are timed once more side by side (publish_race):
alternating bursts of our publish and MLflow's create_model_version on the two 10k registries;
that ratio is the publish target's. At the large size, --publishers processes then each open
their own Registry on the same database and blob store and publish fresh adapters at once;
their combined rate is reported beside the single-process one, and afterwards no version may
be lost or duplicated.
The last line printed is one JSON object with every figure (top-level keys: SQLite).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import shutil
import statistics
import sys
import time
import traceback
from datetime import datetime, timedelta, timezone
from pathlib import Path

# Set by main() before MLflow is imported (never at import: publish_ab imports this module).
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from sqlalchemy import create_engine, insert  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from registry import PublishRequest, Registry, db  # noqa: E402
from registry.adapter import WEIGHTS_FILE, scan_adapter  # noqa: E402
from registry.engine import normalize_url, write_tx  # noqa: E402
from registry.lint import lint_adapter  # noqa: E402
from registry.shapes import read_safetensors_header  # noqa: E402

DIGEST = "sha256:" + "5e" * 32
HIDDEN, KV, LAYERS = 64, 32, 2
METHODS = ["lora"] * 7 + ["dora", "ia3", "lora-plus"]  # 70% lora
TEAMS = [f"team-{i:02d}" for i in range(20)]  # a tag value matches 5% of versions
WARMUP = 20  # untimed publishes before the timed ones
BATCH = 100  # adapters per publish_many call
WARM_EACH = 2  # untimed publishes per concurrent publisher, before the common start
MIN_CALLS = 20  # timed calls of a query at least, whatever its time budget
PEER_BUDGET_S = 60.0  # timed seconds per MLflow query at most (its tag filters on PostgreSQL: ~1-7 s a call)
QUERIES = ["versions_of_task", "alias_lookup", "filter_by_tag", "filter_by_method",
           "metric_threshold", "task_list_page"]


def make_base(root: Path) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    t = {}
    for i in range(LAYERS):
        t[f"model.layers.{i}.self_attn.q_proj.weight"] = rng.standard_normal(
            (HIDDEN, HIDDEN), dtype=np.float32)
        t[f"model.layers.{i}.self_attn.v_proj.weight"] = rng.standard_normal(
            (KV, HIDDEN), dtype=np.float32)
    save_file(t, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({"hidden_size": HIDDEN}))
    return root


def make_adapter(root: Path, seed: int, r: int = 4) -> Path:
    """A small LoRA folder (~5 KB) for the bench base."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    t = {}
    for i in range(LAYERS):
        for name, out_f in (("q_proj", HIDDEN), ("v_proj", KV)):
            k = f"base_model.model.model.layers.{i}.self_attn.{name}"
            t[f"{k}.lora_A.weight"] = rng.standard_normal((r, HIDDEN), dtype=np.float32)
            t[f"{k}.lora_B.weight"] = rng.standard_normal((out_f, r), dtype=np.float32)
    save_file(t, str(root / "adapter_model.safetensors"))
    (root / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r,
         "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0, "bias": "none"}))
    return root


def cpu_probe() -> float:
    """CPU seconds of a fixed pure-Python loop (3M additions): the host's speed of the moment.
    On a shared host it is not constant (0.25 s and 0.6 s on the same machine an hour apart), and
    every latency here moves with it; the bench prints it at its start and its end."""
    c = time.thread_time()
    s = 0
    for i in range(3_000_000):
        s += i
    return round(time.thread_time() - c, 3)


def _q(xs: list[float], p: int) -> float:
    return round(statistics.quantiles(sorted(xs), n=100, method="inclusive")[p - 1], 4)


def timed(fn, args_list, budget_s: float | None = None) -> dict[str, float]:
    """Wall-clock p50/p95 (the figures), plus the p95 of the CPU time this thread spent:
    when the machine is shared, the gap between the two is time spent waiting for a core.
    budget_s: stop once the timed calls have taken that long (at least MIN_CALLS of them): a
    peer's query that takes seconds would otherwise hold the bench for half an hour. ``n`` is
    how many were timed."""
    for a in args_list[:5]:  # warm caches and statement compilation
        fn(*a)
    wall, cpu = [], []
    for a in args_list:
        c0, t0 = time.thread_time(), time.perf_counter()
        fn(*a)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.thread_time() - c0) * 1000)
        if budget_s is not None and len(wall) >= MIN_CALLS and sum(wall) > budget_s * 1000:
            break
    return {"p50_ms": _q(wall, 50), "p95_ms": _q(wall, 95), "cpu_p95_ms": _q(cpu, 95),
            "n": len(wall)}


def synthesize(reg: Registry, n_tasks: int, per_task: int, pool: list[dict]) -> None:
    """Bulk-insert n_tasks x per_task versions that reference real, stored blobs."""
    rng = random.Random(42)
    t0 = datetime(2025, 1, 1)
    dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
    with write_tx(reg.engine) as conn:
        conn.execute(insert(db.tasks), [
            {"id": t + 1, "name": f"task-{t:05d}", "base_digest": DIGEST,
             "latest_version": per_task, "n_versions": per_task,
             "created_at": t0, "updated_at": t0} for t in range(n_tasks)])
        vid = 0
        for chunk in range(0, n_tasks, 2000):
            versions, tags, metrics, aliases = [], [], [], []
            for t in range(chunk, min(n_tasks, chunk + 2000)):
                for v in range(1, per_task + 1):
                    vid += 1
                    p = pool[(t * per_task + v) % len(pool)]
                    method = rng.choice(METHODS)
                    team = rng.choice(TEAMS)
                    acc = rng.uniform(0.5, 1.0)
                    al = (["production"] if v == per_task - 1 else
                          ["staging"] if v == per_task else [])
                    vt = {"team": team, "dataset": f"ds-{rng.randrange(50)}"}
                    vm = {"accuracy": acc, "loss": 1.0 - acc}
                    versions.append({
                        "id": vid, "task_id": t + 1, "task_name": f"task-{t:05d}",
                        "version": v, "adapter_id": p["id"],
                        "base_digest": DIGEST, "method": method, "status": "active",
                        "vllm_servable": method in ("lora", "lora-plus"),
                        "created_at": t0 + timedelta(seconds=vid * 30),
                        "files": p["files"], "lint": "[]",
                        "lineage": dumps({"mlflow_run_id": f"{vid:032x}",
                                          "git_commit": f"{vid:040x}"}),
                        "tags": dumps(vt), "metrics": dumps(vm), "aliases": dumps(al)})
                    tags += [{"version_id": vid, "key": k, "value": x} for k, x in vt.items()]
                    metrics += [{"version_id": vid, "key": k, "value": x}
                                for k, x in vm.items()]
                    aliases += [{"task_id": t + 1, "alias": a, "version_id": vid} for a in al]
            conn.execute(insert(db.versions), versions)
            conn.execute(insert(db.tags), tags)
            conn.execute(insert(db.metrics), metrics)
            conn.execute(insert(db.aliases), aliases)
        if conn.dialect.name == "postgresql":
            # Explicit ids leave the serial sequences untouched; publish takes its ids from them.
            for t in (db.tasks, db.versions):
                conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{t.name}', "
                                     f"'id'), (SELECT max(id) FROM {t.name}))")
    reg.optimize()
    if reg.engine.dialect.name == "postgresql":
        # Autovacuum would soon do this after a bulk load (and then set the visibility map
        # that index-only scans rely on); doing it now keeps it out of the timed sections.
        with reg.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM")


def blob_pool(reg: Registry, work: Path, n: int) -> list[dict]:
    """n distinct small adapters stored as real blobs, to be shared by synthesized rows."""
    out = []
    for i in range(n):
        folder = scan_adapter(make_adapter(work / "pool" / f"p{i}", seed=i))
        for name, e in folder.files.items():
            reg.blobs.put(folder.path / name, e["sha256"])
        out.append({"id": folder.adapter_id,
                    "files": json.dumps(folder.files, sort_keys=True, separators=(",", ":"))})
    return out


def bench_ours(db_url: str, blob_uri: str, work: Path, n_tasks: int, per_task: int,
               pool_dirs: list[Path], repeats: int,
               n_publish: int) -> tuple[dict, tuple[float, float], float]:
    """Our registry on an empty database at db_url (any backend) with blobs at blob_uri:
    synthesize n_tasks x per_task versions, time the queries, then publish throughput one
    call per adapter and through publish_many. Returns (queries, (rate, batched), synth_s)."""
    reg = Registry.open(db_url, blob_uri)
    reg.register_base(make_base(work / "base"), digest=DIGEST, name="bench-base")
    t0 = time.perf_counter()
    pool = blob_pool(reg, work, len(pool_dirs))
    synthesize(reg, n_tasks, per_task, pool)
    synth_s = time.perf_counter() - t0
    assert reg.count_versions() == n_tasks * per_task
    rng = random.Random(7)
    tasks = [(f"task-{rng.randrange(n_tasks):05d}",) for _ in range(repeats)]
    res = {
        "versions_of_task": timed(lambda t: reg.versions(t), tasks),
        "alias_lookup": timed(lambda t: reg.get(t, alias="production"), tasks),
        "filter_by_tag": timed(lambda team: reg.search(tag=("team", team), limit=100),
                               [(rng.choice(TEAMS),) for _ in range(repeats)]),
        "filter_by_method": timed(lambda m: reg.search(method=m, limit=100),
                                  [(rng.choice(["dora", "ia3", "lora"]),)
                                   for _ in range(repeats)]),
        "metric_threshold": timed(
            lambda x: reg.search(metric=("accuracy", ">=", x), limit=100),
            [(rng.choice([0.6, 0.7, 0.8, 0.9]),) for _ in range(repeats)]),
        "task_list_page": timed(lambda: reg.list_tasks(limit=100), [()] * repeats),
    }
    assert reg.search(tag=("team", TEAMS[0]), limit=100).items  # the filter matches
    # Publish throughput: fresh adapters (new bytes) through the full publish path. A few
    # untimed publishes first (statement compilation, first blob folders), as MLflow's
    # rate is the mean over its 10k registrations. Then: one call per adapter, and the
    # same work in batches of BATCH through publish_many (one transaction per batch).
    warm, single, batched = (pool_dirs[:WARMUP], pool_dirs[WARMUP:WARMUP + n_publish],
                             pool_dirs[WARMUP + n_publish:WARMUP + 2 * n_publish])
    for p in warm:
        reg.publish(f"task-{rng.randrange(n_tasks):05d}", p, base_digest=DIGEST,
                    method="lora")
    jobs = [(f"task-{rng.randrange(n_tasks):05d}", p) for p in single]
    os.sync()  # start both timed sections with no pending writeback from the synthesis
    t0 = time.perf_counter()
    for task, p in jobs:
        reg.publish(task, p, base_digest=DIGEST, method="lora",
                    metrics={"accuracy": 0.9}, tags={"team": "team-00"})
    rate = len(jobs) / (time.perf_counter() - t0)
    reqs = [PublishRequest(f"task-{rng.randrange(n_tasks):05d}", p, base_digest=DIGEST,
                           method="lora", metrics={"accuracy": 0.9}, tags={"team": "team-00"})
            for p in batched]
    os.sync()
    t0 = time.perf_counter()
    for i in range(0, len(reqs), BATCH):
        reg.publish_many(reqs[i:i + BATCH])
    batch_rate = len(reqs) / (time.perf_counter() - t0)
    assert reg.count_versions() == n_tasks * per_task + len(warm) + len(jobs) + len(reqs)
    reg.close()
    return res, (rate, batch_rate), synth_s


def publish_breakdown(work: Path, n: int) -> dict[str, float]:
    """Where one publish's time goes, in µs per adapter, each part timed on its own over n
    fresh adapters: hashing the folder, reading the header and linting it, writing both
    files as new blobs, and a whole publish when the blobs are already stored (so it is the
    checks plus the metadata transaction); plus the file system's cost of one 5 KB
    create + write + rename, the floor under every blob write."""
    d = work / "breakdown"
    reg = Registry.open(f"sqlite:///{d / 'registry.db'}", (d / "blobs").as_uri())
    reg.register_base(make_base(work / "base"), digest=DIGEST, name="bench-base")
    shapes = reg.get_base(DIGEST).module_shapes
    dirs = [make_adapter(d / "src" / f"b{i}", seed=2_000_000 + i) for i in range(n)]
    for p in dirs[:5]:  # warm-up, not timed
        reg.publish("warm", p, base_digest=DIGEST, method="lora")
    dirs = dirs[5:]

    def per_adapter(fn) -> float:
        os.sync()
        t0 = time.perf_counter()
        for p in dirs:
            fn(p)
        return round((time.perf_counter() - t0) / len(dirs) * 1e6, 1)

    folders = {p: scan_adapter(p) for p in dirs}
    out = {"scan_us": per_adapter(scan_adapter),
           # From the bytes the scan kept, as publish does.
           "header_and_lint_us": per_adapter(lambda p: lint_adapter(
               folders[p].config, read_safetensors_header(
                   p / WEIGHTS_FILE, folders[p].data.get(WEIGHTS_FILE)), shapes)),
           "blob_writes_us": per_adapter(lambda p: [
               reg.blobs.put(p / f, e["sha256"], folders[p].data.get(f))
               for f, e in folders[p].files.items()]),
           "publish_blobs_stored_us": per_adapter(lambda p: reg.publish(
               "t", p, base_digest=DIGEST, method="lora", metrics={"accuracy": 0.9},
               tags={"team": "team-00"}))}
    payload = os.urandom(5_000)
    raw = d / "raw"
    raw.mkdir()
    os.sync()
    t0 = time.perf_counter()
    for i in range(1_000):
        tmp = raw / f".t{i}"
        with open(tmp, "wb") as f:
            f.write(payload)
        os.replace(tmp, raw / f"f{i}")
    out["file_create_rename_us"] = round((time.perf_counter() - t0) / 1_000 * 1e6, 1)
    reg.close()
    return out


# ----------------------------------------------------------------------------- concurrency
def _publisher(db_url: str, blob_uri: str, jobs: list[tuple[str, str]], barrier,
               results) -> None:
    """One concurrent publisher process: warm up untimed, wait for the others, then publish
    its jobs ((task, adapter folder) pairs); put (start, end, [(task, version)]) or
    ("error", traceback) on results."""
    try:
        with Registry.open(db_url, blob_uri) as reg:
            done = []
            for i, (task, p) in enumerate(jobs):
                if i == WARM_EACH:  # connection, statements and blob folders are warm now
                    barrier.wait(timeout=600)
                    t0 = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
                v = reg.publish(task, Path(p), base_digest=DIGEST, method="lora",
                                metrics={"accuracy": 0.9}, tags={"team": "team-00"})
                done.append((v.task, v.version))
            results.put((t0, time.perf_counter(), done))
    except BaseException:
        barrier.abort()  # release the others instead of leaving them at the barrier
        results.put(("error", traceback.format_exc(), []))


def concurrent_publish(db_url: str, blob_uri: str, n_tasks: int,
                       worker_dirs: list[list[Path]]) -> dict:
    """Publish from len(worker_dirs) processes at once (spawned, each with its own Registry),
    each its own fresh adapters to random existing tasks, all started behind a barrier.
    The rate is every timed version over the wall time from the common start to the last
    finish. Afterwards the version count must be exactly what was published and every
    version's blobs must be stored."""
    rng = random.Random(11)
    jobs = [[(f"task-{rng.randrange(n_tasks):05d}", str(p)) for p in dirs]
            for dirs in worker_dirs]
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(len(jobs)), ctx.Queue()
    with Registry.open(db_url, blob_uri) as reg:
        before = reg.count_versions()
    os.sync()
    procs = [ctx.Process(target=_publisher, args=(db_url, blob_uri, j, barrier, results))
             for j in jobs]
    for p in procs:
        p.start()
    out = [results.get(timeout=1200) for _ in procs]
    for p in procs:
        p.join()
    errors = [r[1] for r in out if r[0] == "error"]
    assert not errors, errors[0]
    wall = max(r[1] for r in out) - min(r[0] for r in out)
    timed_n = sum(len(j) - WARM_EACH for j in jobs)
    published = [tv for r in out for tv in r[2]]
    assert len(published) == len(set(published)) == sum(map(len, jobs))  # none duplicated
    with Registry.open(db_url, blob_uri) as reg:
        assert reg.count_versions() == before + len(published)  # none lost, none extra
        assert not reg.verify(check_bytes=False)["missing"]
    return {"publishers": len(jobs), "versions_each": len(jobs[0]) - WARM_EACH,
            "wall_s": round(wall, 3), "versions_per_s": round(timed_n / wall, 1),
            "verified": True}


# ----------------------------------------------------------------------------- PostgreSQL
@contextlib.contextmanager
def pg_admin(server_url: str):
    """An autocommit connection to the server (the database server_url names), for the
    statements that cannot run in a transaction (CREATE/DROP DATABASE, CHECKPOINT)."""
    admin = create_engine(make_url(normalize_url(server_url)), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            yield conn
    finally:
        admin.dispose()


def pg_database(server_url: str, name: str, drop_only: bool = False) -> str:
    """Drop database `name` on the server if it exists and (unless drop_only) create it
    empty; return its URL. server_url names the database to connect to for that."""
    with pg_admin(server_url) as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    return make_url(normalize_url(server_url)).set(database=name).render_as_string(
        hide_password=False)


# ----------------------------------------------------------------------------- MLflow
def bench_mlflow(work: Path, n_models: int, per_model: int, repeats: int,
                 uri: str | None = None) -> tuple[dict, float, float]:
    """MLflow's Model Registry at n_models x per_model versions: query latencies, its mean
    create_model_version rate and the synthesis time. uri: its backend store (default: a fresh
    SQLite file under work; a PostgreSQL URL for the same-backend reference)."""
    from mlflow.tracking import MlflowClient

    d = work / ("mlflow" if uri is None else "mlflow-pg")
    d.mkdir(parents=True, exist_ok=True)
    uri = uri or f"sqlite:///{d / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    rng = random.Random(42)
    os.sync()
    t0 = time.perf_counter()
    version_s = 0.0
    for m in range(n_models):
        name = f"task-{m:05d}"
        c.create_registered_model(name)
        for v in range(1, per_model + 1):
            t1 = time.perf_counter()
            c.create_model_version(name, source=f"{d}/src/{m}/{v}", tags={
                "team": rng.choice(TEAMS), "method": rng.choice(METHODS),
                "dataset": f"ds-{rng.randrange(50)}"})
            version_s += time.perf_counter() - t1
        c.set_registered_model_alias(name, "production", per_model - 1)
        c.set_registered_model_alias(name, "staging", per_model)
    synth_s = time.perf_counter() - t0
    rate = n_models * per_model / version_s
    tasks = [(f"task-{rng.randrange(n_models):05d}",) for _ in range(repeats)]
    b = PEER_BUDGET_S
    res = {
        "versions_of_task": timed(
            lambda t: c.search_model_versions(f"name = '{t}'"), tasks, b),
        "alias_lookup": timed(lambda t: c.get_model_version_by_alias(t, "production"), tasks, b),
        "filter_by_tag": timed(
            lambda team: c.search_model_versions(f"tags.team = '{team}'", max_results=100),
            [(rng.choice(TEAMS),) for _ in range(repeats)], b),
        "filter_by_method": timed(
            lambda m: c.search_model_versions(f"tags.method = '{m}'", max_results=100),
            [(rng.choice(["dora", "ia3", "lora"]),) for _ in range(repeats)], b),
        # MLflow's Model Registry keeps no metrics on versions and cannot filter by one.
        "metric_threshold": None,
        "task_list_page": timed(lambda: c.search_registered_models(max_results=100),
                                [()] * repeats, b),
    }
    return res, rate, synth_s


def _disk_written_mb() -> float | None:
    """MB written to the machine's block devices since boot, or None where Linux's
    /sys/block is not there. Whole devices only (/sys/block lists no partitions, so nothing is
    counted twice); loop and RAM-backed devices are not disks."""
    try:
        devices = [d for d in os.listdir("/sys/block") if not d.startswith(("loop", "ram", "zram"))]
        sectors = 0
        for d in devices:
            with open(f"/sys/block/{d}/stat") as f:
                sectors += int(f.read().split()[6])  # sectors written, 512 bytes each
        return sectors * 512 / 1e6
    except OSError:
        return None


def _counters() -> dict[str, float]:
    """What the race takes the difference of over each side's bursts: this process's CPU
    seconds, the whole machine's busy (user, nice, system, irq, softirq) and stolen CPU seconds
    (psutil), and the MB written to the disks (where Linux's /sys/block says)."""
    t = psutil.cpu_times()
    out = {"own": time.process_time(),
           "machine_busy": t.user + t.nice + t.system + getattr(t, "irq", 0.0)
           + getattr(t, "softirq", 0.0),
           "steal": getattr(t, "steal", 0.0)}
    mb = _disk_written_mb()
    if mb is not None:
        out["disk_mb"] = mb
    return out


def quiesce(pg_url: str | None, max_wait_s: float = 120.0) -> dict:
    """Let what the bench's earlier phases left running finish before a timed race: on the
    PostgreSQL server (when one is in use, for both races) a CHECKPOINT, then a wait (bounded)
    until no autovacuum worker runs (each burst then starts with its own os.sync()). Returns
    the seconds each took."""
    out = {"checkpoint_s": 0.0, "autovacuum_wait_s": 0.0}
    if pg_url is None:
        return out
    with pg_admin(pg_url) as conn:
        t0 = time.perf_counter()
        conn.exec_driver_sql("CHECKPOINT")
        out["checkpoint_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < max_wait_s and conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE backend_type = 'autovacuum worker'").scalar():
            time.sleep(0.5)
        out["autovacuum_wait_s"] = round(time.perf_counter() - t0, 2)
    return out


def publish_race(ours_url: str, blob_uri: str, ml_uri: str, dirs: list[Path], n_tasks: int,
                 rounds: int, pg_url: str | None = None) -> dict:
    """Both registries' publish rates timed side by side: ``rounds`` rounds, each a burst of
    our publish (new adapter folders, as bench_ours times it) and a burst of MLflow's
    create_model_version (as its synthesis times it), the order alternating round by round
    (ABBA), on the 10k registries the queries were timed on, after one untimed burst each
    (ours is reopened after minutes idle, with larger databases benched since: the first run
    of this bench without it took ~300 publishes to reach its rate). What it buys: the two
    rates come from the same minutes of the same machine, so its speed of the moment (on a
    shared host it swings by tens of per cent within minutes) cancels in the ratio, where
    the separate figures set our half-second burst against MLflow's mean over the two
    minutes of its synthesis. pg_url: the PostgreSQL server the bench used, if any (both
    races then start with it quiet: quiesce)."""
    from mlflow.tracking import MlflowClient

    reg = Registry.open(ours_url, blob_uri)
    c = MlflowClient(tracking_uri=ml_uri, registry_uri=ml_uri)
    rng = random.Random(11)
    burst = len(dirs) // (rounds + 1)
    src = dirs[0].parent  # MLflow's versions name a source folder, as in its synthesis
    spent = {"ours": 0.0, "mlflow": 0.0}
    # _counters' differences over each side's bursts: a side is CPU-bound when its own CPU is
    # near its wall time; what the machine spent beyond that was someone else's (the database
    # server, another process).
    used = {side: dict.fromkeys(("own", "machine_busy", "steal", "disk_mb"), 0.0)
            for side in spent}
    per_round: list[dict] = []

    def ours(chunk):
        jobs = [(f"task-{rng.randrange(n_tasks):05d}", p) for p in chunk]
        t0 = time.perf_counter()
        for task, p in jobs:
            reg.publish(task, p, base_digest=DIGEST, method="lora",
                        metrics={"accuracy": 0.9}, tags={"team": "team-00"})
        return time.perf_counter() - t0

    def mlflow(chunk):
        jobs = [(f"task-{rng.randrange(n_tasks):05d}", i) for i, _ in enumerate(chunk)]
        tags = [{"team": rng.choice(TEAMS), "method": rng.choice(METHODS),
                 "dataset": f"ds-{rng.randrange(50)}"} for _ in chunk]
        t0 = time.perf_counter()
        for (name, i), t in zip(jobs, tags):
            c.create_model_version(name, source=f"{src}/{name}/{i}", tags=t)
        return time.perf_counter() - t0

    ours(dirs[:burst])  # the warm-up bursts, untimed
    mlflow(dirs[:burst])
    settled = quiesce(pg_url)
    for r in range(rounds):
        chunk = dirs[(r + 1) * burst:(r + 2) * burst]
        order = (("ours", ours), ("mlflow", mlflow))
        took = {}
        for side, fn in (order if r % 2 == 0 else order[::-1]):
            os.sync()  # each burst starts with no writeback pending from the other's
            before = _counters()
            took[side] = fn(chunk)
            spent[side] += took[side]
            for k, v in _counters().items():
                used[side][k] += v - before[k]
        per_round.append({k: round(burst / v, 1) for k, v in took.items()})
    reg.close()
    n = burst * rounds
    print(f"  settled before the race: {settled}; during the bursts (wall s, own CPU s, machine "
          "busy s, steal s, MB to disk): " + "; ".join(
              f"{side} {spent[side]:.2f}, {u['own']:.2f}, {u['machine_busy']:.2f}, "
              f"{u['steal']:.2f}, {u['disk_mb']:.1f}" for side, u in used.items()),
          file=sys.stderr)
    return {"rounds": rounds, "burst": burst, "ours_per_s": round(n / spent["ours"], 1),
            "mlflow_per_s": round(n / spent["mlflow"], 1),
            "speedup": round(spent["mlflow"] / spent["ours"], 2), "per_round": per_round,
            "settled": settled,
            "disk_mb_written": {side: round(u["disk_mb"], 1) for side, u in used.items()},
            # to the millisecond: a smoke race's bursts of a few publishes take less than 10 ms
            "cpu_s": {side: {"wall": round(spent[side], 3),
                             **{k: round(u[k], 3) for k in ("own", "machine_busy", "steal")}}
                      for side, u in used.items()}}


# ----------------------------------------------------------------------------- main
def compare(ours_small: dict, ours_big: dict, pubs: dict, ml: dict | None,
            pub_ml: float | None, n_conc: int, race: dict | None = None
            ) -> tuple[dict, dict, list[tuple]]:
    """One backend's speedups vs MLflow, its three targets, and its table rows. The publish
    target is judged on the side-by-side bursts (publish_race) where they ran."""
    rows, speed = [], {}
    for q in QUERIES:
        o, b = ours_small[q], ours_big[q]
        m = ml.get(q) if ml else None
        sp = None
        if m:
            sp = {"p50": round(m["p50_ms"] / o["p50_ms"], 1),
                  "p95": round(m["p95_ms"] / o["p95_ms"], 1)}
        speed[q] = sp
        rows.append((q, f"{o['p50_ms']:.3f} / {o['p95_ms']:.3f}",
                     f"{b['p50_ms']:.3f} / {b['p95_ms']:.3f}",
                     f"{m['p50_ms']:.3f} / {m['p95_ms']:.3f}" if m else "n/a",
                     f"{sp['p50']}x / {sp['p95']}x" if sp else "n/a"))
    pub_small, pub_big = pubs["ours_small"], pubs["ours_large"]
    rows.append(("publish (versions/s)", f"{pub_small:.0f}", f"{pub_big:.0f}",
                 f"{pub_ml:.0f}" if pub_ml else "n/a",
                 f"{pub_small / pub_ml:.1f}x" if pub_ml else "n/a"))
    if race:
        rows.append((f"publish, side by side, {race['rounds']} x {race['burst']} (versions/s)",
                     f"{race['ours_per_s']:.0f}", "n/a", f"{race['mlflow_per_s']:.0f}",
                     f"{race['speedup']:.2f}x"))
    rows.append((f"publish_many, {BATCH}/call (versions/s)", f"{pubs['ours_small_batched']:.0f}",
                 f"{pubs['ours_large_batched']:.0f}", "n/a (no batch API)",
                 f"{pubs['ours_small_batched'] / pub_ml:.1f}x" if pub_ml else "n/a"))
    conc = pubs.get(f"ours_large_concurrent_{n_conc}")
    if conc:
        rows.append((f"publish, {n_conc} processes at once (versions/s)", "n/a",
                     f"{conc:.0f}", "n/a", f"{conc / pub_big:.1f}x one process"))
    targets = {
        "p95_under_5ms_at_large": all(ours_big[q]["p95_ms"] < 5 for q in QUERIES),
        "10x_faster_than_mlflow": all(
            speed[q] is None or speed[q]["p95"] >= 10 and speed[q]["p50"] >= 10
            for q in QUERIES) if ml else None,
        "publish_5x_mlflow": (race["speedup"] >= 5 if race else
                              (pub_small / pub_ml >= 5) if pub_ml else None)}
    return speed, targets, rows


def run_backend(backend: str, a, work: Path, fresh: list[Path],
                worker_dirs: list[list[Path]], pg_dbs: list[str]) -> dict:
    """bench_ours at both sizes on one backend, then the concurrent publishers at the large
    size. PostgreSQL databases created are appended to pg_dbs (for the caller to drop)."""
    out: dict = {"publish_per_s": {}}
    for size, n_tasks in (("small", a.small_tasks), ("large", a.tasks)):
        n = n_tasks * a.per_task
        d = work / f"ours-{backend}-{size}"
        if backend == "sqlite":
            url = f"sqlite:///{d / 'registry.db'}"
        else:
            pg_dbs.append(f"{a.pg_db}_{size}")
            url = pg_database(a.pg_url, pg_dbs[-1])
        blob_uri = (d / "blobs").as_uri()
        print(f"ours on {backend} @ {n:,} versions ...", file=sys.stderr)
        q, (rate, batch_rate), synth_s = bench_ours(url, blob_uri, work, n_tasks, a.per_task,
                                                    fresh, a.repeats, a.publish)
        out[f"ours_{size}"] = q
        if size == "small":  # kept for publish_race, on the registry the queries were timed on
            out["small_registry"] = (url, blob_uri)
        out[f"synthesis_{size}_s"] = round(synth_s, 1)
        out["publish_per_s"].update({f"ours_{size}": round(rate, 1),
                                     f"ours_{size}_batched": round(batch_rate, 1)})
        if size == "large" and worker_dirs:
            print(f"  {len(worker_dirs)} concurrent publishers ...", file=sys.stderr)
            c = concurrent_publish(url, blob_uri, n_tasks, worker_dirs)
            out["publish_concurrent"] = c
            out["publish_per_s"][f"ours_large_concurrent_{len(worker_dirs)}"] = \
                c["versions_per_s"]
    return out


def print_table(title: str, rows: list[tuple], small_n: int, big_n: int) -> None:
    print(title)
    rows = [("query", f"ours@{small_n // 1000}k p50/p95", f"ours@{big_n // 1000}k p50/p95",
             f"MLflow@{small_n // 1000}k p50/p95", "speedup p50/p95")] + rows
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def main() -> None:
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=10_000, help="tasks in the large registry")
    ap.add_argument("--per-task", type=int, default=10)
    ap.add_argument("--small-tasks", type=int, default=1_000,
                    help="tasks (MLflow models) at the 10k size")
    ap.add_argument("--repeats", type=int, default=300, help="timed calls per query")
    ap.add_argument("--publish", type=int, default=500, help="publishes timed")
    ap.add_argument("--pool", type=int, default=1_000, help="distinct synthesized blobs")
    ap.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="sqlite")
    ap.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="PostgreSQL server; the database named is only used to create and "
                         "drop the bench's own")
    ap.add_argument("--pg-db", default="peftops_bench_registry",
                    help="prefix of the bench's PostgreSQL databases (_small, _large)")
    ap.add_argument("--publishers", type=int, default=8,
                    help="concurrent publishing processes at the large size (0: none)")
    ap.add_argument("--publish-each", type=int, default=250,
                    help="versions each concurrent publisher publishes (timed)")
    ap.add_argument("--race-rounds", type=int, default=10,
                    help="rounds of side-by-side publish bursts against MLflow (0: none)")
    ap.add_argument("--race-burst", type=int, default=100,
                    help="publishes a burst, each side (one burst each untimed first)")
    ap.add_argument("--skip-mlflow", action="store_true")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work files and PostgreSQL databases")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "registry")
    a = ap.parse_args()
    backends = ["sqlite", "postgresql"] if a.backend == "both" else [a.backend]

    work = a.out
    if work.exists():  # left by an interrupted run (a finished run removes its own files)
        shutil.rmtree(work)
        # Deleting ~10^4 files and a large database makes the file system busy for a while
        # (journal commits, discards): flush that before anything is timed.
        os.sync()
        time.sleep(5)
    work.mkdir(parents=True)
    probe_start = cpu_probe()
    n_pool = max(a.pool, WARMUP + 2 * a.publish)
    fresh = [make_adapter(work / "fresh" / f"f{i}", seed=1_000_000 + i)
             for i in range(n_pool)]
    # publish_race's adapters (it runs only beside MLflow): one untimed burst, then the rounds.
    race_dirs = [] if a.skip_mlflow else [
        make_adapter(work / "race" / f"r{i}", seed=5_000_000 + i)
        for i in range((a.race_rounds + 1) * a.race_burst)]
    # Each concurrent publisher's adapters: new bytes, distinct from every other's and from
    # `fresh`, written now so that creating them is outside every timed section.
    per = WARM_EACH + a.publish_each
    worker_dirs = [[make_adapter(work / "conc" / f"w{w}" / f"a{i}",
                                 seed=3_000_000 + w * per + i) for i in range(per)]
                   for w in range(a.publishers)]
    small_n, big_n = a.small_tasks * a.per_task, a.tasks * a.per_task
    results: dict = {"sizes": {"small": small_n, "large": big_n}, "backends": backends}

    pg_dbs: list[str] = []
    races: dict[str, dict] = {}
    try:
        by_backend = {}
        for backend in backends:
            by_backend[backend] = run_backend(backend, a, work, fresh, worker_dirs, pg_dbs)
            if backend == "sqlite":
                print("publish cost breakdown ...", file=sys.stderr)
                breakdown = publish_breakdown(work, 305)
        ml, pub_ml, s3 = (None, None, None)
        ml_pg, pub_ml_pg, s3_pg = (None, None, None)
        if not a.skip_mlflow:
            print(f"MLflow registry on SQLite @ {small_n:,} versions (registering them) ...",
                  file=sys.stderr)
            ml_uri = f"sqlite:///{work / 'mlflow' / 'mlflow.db'}"  # bench_mlflow's default
            ml, pub_ml, s3 = bench_mlflow(work, a.small_tasks, a.per_task, a.repeats)
        if "postgresql" in backends and not a.skip_mlflow:
            # The same-backend peer for our PostgreSQL figures: one round trip to a server
            # costs more than a whole in-process SQLite lookup, so only MLflow on the same
            # server measures the registries rather than the transports.
            print(f"MLflow registry on PostgreSQL @ {small_n:,} versions ...", file=sys.stderr)
            pg_dbs.append(f"{a.pg_db}_mlflow")
            ml_pg_uri = normalize_url(pg_database(a.pg_url, pg_dbs[-1]))
            ml_pg, pub_ml_pg, s3_pg = bench_mlflow(
                work, a.small_tasks, a.per_task, a.repeats, uri=ml_pg_uri)
        if not a.skip_mlflow and a.race_rounds:
            for backend in backends:
                print(f"publish side by side with MLflow on {backend} ...", file=sys.stderr)
                races[backend] = publish_race(
                    *by_backend[backend].pop("small_registry"),
                    ml_pg_uri if backend == "postgresql" else ml_uri, race_dirs,
                    a.small_tasks, a.race_rounds,
                    a.pg_url if "postgresql" in backends else None)
        for r in by_backend.values():
            r.pop("small_registry", None)
    finally:
        if not a.keep:
            for name in pg_dbs:
                pg_database(a.pg_url, name, drop_only=True)

    if "sqlite" in by_backend:
        r = by_backend["sqlite"]
        speed, targets, rows = compare(r["ours_small"], r["ours_large"], r["publish_per_s"],
                                       ml, pub_ml, a.publishers, races.get("sqlite"))
        print_table("SQLite", rows, small_n, big_n)
        pub_small, batch_small = r["publish_per_s"]["ours_small"], \
            r["publish_per_s"]["ours_small_batched"]
        print(f"synthesis: ours@small {r['synthesis_small_s']:.1f}s, ours@large "
              f"{r['synthesis_large_s']:.1f}s" + (f", MLflow@small {s3:.1f}s" if s3 else ""))
        print(f"one publish, µs per adapter: {1e6 / pub_small:.0f} in all (fresh blobs); "
              + ", ".join(f"{k[:-3].replace('_', ' ')} {v:.0f}" for k, v in breakdown.items()))
        print("CPU-time p95 ours@large (ms): " + ", ".join(
            f"{q} {r['ours_large'][q]['cpu_p95_ms']:.3f}" for q in QUERIES))
        results.update({
            "ours_small": r["ours_small"], "ours_large": r["ours_large"], "mlflow_small": ml,
            "speedup_vs_mlflow_small": speed,
            "publish_per_s": {**r["publish_per_s"],
                              "mlflow_small": round(pub_ml, 1) if pub_ml else None},
            "publish_speedup": round(pub_small / pub_ml, 2) if pub_ml else None,
            "publish_batched_speedup": round(batch_small / pub_ml, 2) if pub_ml else None,
            "publish_batch_size": BATCH,
            "publish_breakdown_us": {"publish_fresh_blobs_us": round(1e6 / pub_small, 1),
                                     **breakdown},
            "publish_concurrent": r.get("publish_concurrent"),
            "publish_race": races.get("sqlite"),
            "targets": targets})
    if "postgresql" in by_backend:
        r = by_backend["postgresql"]
        pub_small = r["publish_per_s"]["ours_small"]
        results["postgresql"] = {**r, "publish_race": races.get("postgresql")}
        # Against MLflow on the same PostgreSQL server (the targets), then on SQLite (for
        # reference: a transport against an in-process library).
        for key, ref_ml, ref_pub, title in (
                ("", ml_pg, pub_ml_pg, "MLflow on PostgreSQL, this run"),
                ("_sqlite", ml, pub_ml, "MLflow on SQLite, this run")):
            if ref_ml is None and key:
                continue
            speed, targets, rows = compare(r["ours_small"], r["ours_large"],
                                           r["publish_per_s"], ref_ml, ref_pub, a.publishers,
                                           races.get("postgresql") if not key else None)
            print_table("PostgreSQL" + (f" (MLflow column: {title})" if ref_ml
                                        else " (no MLflow reference: p95 target only)"),
                        rows, small_n, big_n)
            results["postgresql"].update({
                f"mlflow_reference{key}": title if ref_ml else None,
                f"speedup_vs_mlflow_small{key}": speed,
                f"publish_speedup{key}": round(pub_small / ref_pub, 2) if ref_pub else None,
                f"publish_batched_speedup{key}": round(
                    r["publish_per_s"]["ours_small_batched"] / ref_pub, 2) if ref_pub else None,
                f"targets{key}": targets})
        results["postgresql"]["mlflow_small"] = ml_pg
        results["postgresql"]["publish_per_s"]["mlflow_small"] = (
            round(pub_ml_pg, 1) if pub_ml_pg else None)
        print(f"synthesis: ours@small {r['synthesis_small_s']:.1f}s, ours@large "
              f"{r['synthesis_large_s']:.1f}s" + (f", MLflow@small {s3_pg:.1f}s" if s3_pg else ""))
        print("CPU-time p95 ours@large (ms): " + ", ".join(
            f"{q} {r['ours_large'][q]['cpu_p95_ms']:.3f}" for q in QUERIES))
    try:
        load = "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "load average n/a"
    probes = [probe_start, cpu_probe()]
    print(f"{os.cpu_count()} CPUs, {load}; CPU probe (a fixed Python loop, s) at the start "
          f"{probes[0]}, at the end {probes[1]}")
    results.update({"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "cpus": os.cpu_count(), "loadavg": list(os.getloadavg()),
                    "cpu_probe_s": probes})
    if not a.keep:  # cleaned up now, not at the next run's start, where it would slow the timing
        shutil.rmtree(work)
    print(json.dumps(results, separators=(",", ":")))


if __name__ == "__main__":
    main()
