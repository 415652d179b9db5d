# python bench/registry_bench.py
"""Adapter-registry benchmark: our registry at 10k and 100k versions vs MLflow's Model
Registry at 10k, on SQLite, in the same run.

Synthesis uses bulk inserts (it is not what is measured); every measured query goes
through the public Python API (ours) or MlflowClient (theirs), and publish throughput goes
through the real publish path (hash, lint, blob upload + verify, one transaction), one call
per adapter and, separately, in batches through publish_many (one transaction per batch).
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

# Set by main() before MLflow is imported (never at import: publish_ab imports this module).
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from registry import PublishRequest, Registry, db  # noqa: E402
from registry.adapter import WEIGHTS_FILE, scan_adapter  # noqa: E402
from registry.engine import write_tx  # noqa: E402
from registry.lint import lint_adapter  # noqa: E402
from registry.shapes import read_safetensors_header  # noqa: E402

DIGEST = "sha256:" + "5e" * 32
HIDDEN, KV, LAYERS = 64, 32, 2
METHODS = ["lora"] * 7 + ["dora", "ia3", "lora-plus"]  # 70% lora
TEAMS = [f"team-{i:02d}" for i in range(20)]  # a tag value matches 5% of versions
WARMUP = 20  # untimed publishes before the timed ones
BATCH = 100  # adapters per publish_many call
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


def _q(xs: list[float], p: int) -> float:
    return round(statistics.quantiles(sorted(xs), n=100, method="inclusive")[p - 1], 4)


def timed(fn, args_list) -> dict[str, float]:
    """Wall-clock p50/p95 (the figures), plus the p95 of the CPU time this thread spent:
    when the machine is shared, the gap between the two is time spent waiting for a core."""
    for a in args_list[:5]:  # warm caches and statement compilation
        fn(*a)
    wall, cpu = [], []
    for a in args_list:
        c0, t0 = time.thread_time(), time.perf_counter()
        fn(*a)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.thread_time() - c0) * 1000)
    return {"p50_ms": _q(wall, 50), "p95_ms": _q(wall, 95), "cpu_p95_ms": _q(cpu, 95)}


# ----------------------------------------------------------------------------- ours
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
                        "id": vid, "task_id": t + 1, "version": v, "adapter_id": p["id"],
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
    reg.optimize()


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


def bench_ours(work: Path, n_tasks: int, per_task: int, pool_dirs: list[Path],
               repeats: int, n_publish: int) -> tuple[dict, tuple[float, float], float]:
    d = work / f"ours-{n_tasks * per_task}"
    reg = Registry.open(f"sqlite:///{d / 'registry.db'}", (d / "blobs").as_uri())
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


# ----------------------------------------------------------------------------- MLflow
def bench_mlflow(work: Path, n_models: int, per_model: int,
                 repeats: int) -> tuple[dict, float, float]:
    from mlflow.tracking import MlflowClient

    d = work / "mlflow"
    d.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{d / 'mlflow.db'}"
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
    res = {
        "versions_of_task": timed(
            lambda t: c.search_model_versions(f"name = '{t}'"), tasks),
        "alias_lookup": timed(lambda t: c.get_model_version_by_alias(t, "production"), tasks),
        "filter_by_tag": timed(
            lambda team: c.search_model_versions(f"tags.team = '{team}'", max_results=100),
            [(rng.choice(TEAMS),) for _ in range(repeats)]),
        "filter_by_method": timed(
            lambda m: c.search_model_versions(f"tags.method = '{m}'", max_results=100),
            [(rng.choice(["dora", "ia3", "lora"]),) for _ in range(repeats)]),
        # MLflow's Model Registry keeps no metrics on versions and cannot filter by one.
        "metric_threshold": None,
        "task_list_page": timed(lambda: c.search_registered_models(max_results=100),
                                [()] * repeats),
    }
    return res, rate, synth_s


# ----------------------------------------------------------------------------- main
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
    ap.add_argument("--skip-mlflow", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work files (registries, MLflow db)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "registry")
    a = ap.parse_args()

    work = a.out
    if work.exists():  # left by an interrupted run (a finished run removes its own files)
        shutil.rmtree(work)
        # Deleting ~10^4 files and a large database makes the file system busy for a while
        # (journal commits, discards): flush that before anything is timed.
        os.sync()
        time.sleep(5)
    work.mkdir(parents=True)
    n_pool = max(a.pool, WARMUP + 2 * a.publish)
    fresh = [make_adapter(work / "fresh" / f"f{i}", seed=1_000_000 + i)
             for i in range(n_pool)]
    small_n, big_n = a.small_tasks * a.per_task, a.tasks * a.per_task
    results: dict = {"sizes": {"small": small_n, "large": big_n}}

    print(f"ours @ {small_n:,} versions ...", file=sys.stderr)
    ours_small, (pub_small, batch_small), s1 = bench_ours(work, a.small_tasks, a.per_task,
                                                          fresh, a.repeats, a.publish)
    print(f"ours @ {big_n:,} versions ...", file=sys.stderr)
    ours_big, (pub_big, batch_big), s2 = bench_ours(work, a.tasks, a.per_task, fresh,
                                                    a.repeats, a.publish)
    print("publish cost breakdown ...", file=sys.stderr)
    breakdown = publish_breakdown(work, 305)
    ml, pub_ml, s3 = (None, None, None)
    if not a.skip_mlflow:
        print(f"MLflow registry @ {small_n:,} versions (registering them) ...",
              file=sys.stderr)
        ml, pub_ml, s3 = bench_mlflow(work, a.small_tasks, a.per_task, a.repeats)

    rows = [("query", f"ours@{small_n // 1000}k p50/p95", f"ours@{big_n // 1000}k p50/p95",
             f"MLflow@{small_n // 1000}k p50/p95", "speedup p50/p95")]
    speed = {}
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
    rows.append(("publish (versions/s)", f"{pub_small:.0f}", f"{pub_big:.0f}",
                 f"{pub_ml:.0f}" if pub_ml else "n/a",
                 f"{pub_small / pub_ml:.1f}x" if pub_ml else "n/a"))
    rows.append((f"publish_many, {BATCH}/call (versions/s)", f"{batch_small:.0f}",
                 f"{batch_big:.0f}", "n/a (no batch API)",
                 f"{batch_small / pub_ml:.1f}x" if pub_ml else "n/a"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"synthesis: ours@small {s1:.1f}s, ours@large {s2:.1f}s" +
          (f", MLflow@small {s3:.1f}s" if s3 else ""))
    print(f"one publish, µs per adapter: {1e6 / pub_small:.0f} in all (fresh blobs); "
          + ", ".join(f"{k[:-3].replace('_', ' ')} {v:.0f}" for k, v in breakdown.items()))
    print("CPU-time p95 ours@large (ms): " + ", ".join(
        f"{q} {ours_big[q]['cpu_p95_ms']:.3f}" for q in QUERIES))
    try:
        load = "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "load average n/a"
    print(f"{os.cpu_count()} CPUs, {load}")

    p95_ok = all(ours_big[q]["p95_ms"] < 5 for q in QUERIES)
    x10_ok = all(speed[q] is None or speed[q]["p95"] >= 10 and speed[q]["p50"] >= 10
                 for q in QUERIES) if ml else None
    results.update({
        "ours_small": ours_small, "ours_large": ours_big, "mlflow_small": ml,
        "speedup_vs_mlflow_small": speed,
        "publish_per_s": {"ours_small": round(pub_small, 1), "ours_large": round(pub_big, 1),
                          "ours_small_batched": round(batch_small, 1),
                          "ours_large_batched": round(batch_big, 1),
                          "mlflow_small": round(pub_ml, 1) if pub_ml else None},
        "publish_speedup": round(pub_small / pub_ml, 2) if pub_ml else None,
        "publish_batched_speedup": round(batch_small / pub_ml, 2) if pub_ml else None,
        "publish_batch_size": BATCH,
        "publish_breakdown_us": {"publish_fresh_blobs_us": round(1e6 / pub_small, 1), **breakdown},
        "targets": {"p95_under_5ms_at_large": p95_ok, "10x_faster_than_mlflow": x10_ok,
                    "publish_5x_mlflow": (pub_small / pub_ml >= 5) if pub_ml else None},
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(), "loadavg": list(os.getloadavg()),
    })
    if not a.keep:  # cleaned up now, not at the next run's start, where it would slow the timing
        shutil.rmtree(work)
    print(json.dumps(results, separators=(",", ":")))


if __name__ == "__main__":
    main()
