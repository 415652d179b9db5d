# python bench/pg_roundtrips.py [--pg-url postgresql://postgres@127.0.0.1:5432/postgres]
"""What one registry call costs on PostgreSQL in messages and waits, and what a round trip
and a durable commit cost on this machine.

Counts: the registry, in a child process under ``strace`` (apt's strace), runs 50 alias
lookups and then 50 publishes; the answers read from the server (``recvfrom`` on the socket)
per call are printed. Under psycopg each call's answer is one read, so for plain statements
the count is the round trips; in pipeline mode a wait may read more than once.
Timings (no strace): ``SELECT 1`` (one round trip) and a one-row INSERT + COMMIT (a round trip
plus the server's WAL flush), p50 / p95 over 300 each. Run it from any checkout
(``PYTHONPATH=<checkout>``) to compare commits. Last line: one JSON object.

``--paths`` (this checkout only) times, in one process and alternating call by call, what
changed in it: 300 publishes of fresh adapters through registry_publish() (one call in
autocommit) against 300 with it switched off (the transaction path every publish took
before), wall p50 / p95 and this thread's CPU per publish; and 600 alias lookups on the
driver's connection against the same statement through Core in autocommit (the read path
before).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CALLS = 50
MARK = "pg-roundtrips:"


def child(pg_url: str, work: Path) -> None:
    """The counted calls, between two marker lines written to stderr."""
    from bench.registry_bench import DIGEST, make_adapter, make_base, pg_database
    from registry import Registry

    url = pg_database(pg_url, "peftops_pg_roundtrips")
    try:
        reg = Registry.open(url, (work / "blobs").as_uri())
        reg.register_base(make_base(work / "base"), digest=DIGEST, name="b")
        dirs = [make_adapter(work / f"a{i}", seed=i) for i in range(10 + CALLS)]
        for p in dirs[:10]:  # warm: the task row exists, statements are prepared
            reg.publish("t", p, base_digest=DIGEST, method="lora")
        reg.set_alias("t", "production", 1)
        for _ in range(10):
            reg.get("t", alias="production")
        for name, call in (("alias_lookup", lambda i: reg.get("t", alias="production")),
                           ("publish", lambda i: reg.publish(
                               "t", dirs[10 + i], base_digest=DIGEST, method="lora",
                               metrics={"a": 1.0}, tags={"k": "v"}))):
            print(f"{MARK}start {name}", file=sys.stderr, flush=True)
            for i in range(CALLS):
                call(i)
            print(f"{MARK}end {name}", file=sys.stderr, flush=True)
        reg.close()
    finally:
        pg_database(pg_url, "peftops_pg_roundtrips", drop_only=True)


def count_reads(trace: Path) -> dict[str, float]:
    reads: dict[str, int] = {}
    current = None
    for line in trace.read_text().splitlines():
        m = re.search(MARK + r"(start|end) (\w+)", line)
        if m:
            current = m.group(2) if m.group(1) == "start" else None
        elif current and "recvfrom(" in line and "EAGAIN" not in line:
            reads[current] = reads.get(current, 0) + 1
    return {k: v / CALLS for k, v in reads.items()}


def timings(pg_url: str) -> dict[str, dict[str, float]]:
    import psycopg

    from registry.engine import normalize_url

    conninfo = normalize_url(pg_url).replace("postgresql+psycopg://", "postgresql://")
    out = {}
    with psycopg.connect(conninfo, autocommit=True) as c:
        c.execute("CREATE TEMP TABLE roundtrip_probe (a int)")
        for name, sql in (("select_1", "SELECT 1"),
                          ("insert_commit", "INSERT INTO roundtrip_probe VALUES (1)")):
            xs = []
            for _ in range(300):
                t0 = time.perf_counter()
                c.execute(sql)  # autocommit: the INSERT is its own durable transaction
                xs.append((time.perf_counter() - t0) * 1000)
            xs.sort()
            out[name] = {"p50_ms": round(xs[150], 3), "p95_ms": round(xs[285], 3)}
    return out


def paths(pg_url: str, work: Path, n: int = 300) -> dict[str, dict[str, float]]:
    """Each new path against the one it replaced, interleaved call by call (see above)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.registry_bench import DIGEST, make_adapter, make_base, pg_database
    from registry import Registry
    from registry.engine import read_one
    from registry.query import GET_BY_ALIAS
    from registry.store import _row_to_version

    def stats(xs: list[tuple[float, float]]) -> dict[str, float]:
        wall = sorted(w for w, _ in xs)
        return {"p50_ms": round(wall[len(wall) // 2], 3), "p95_ms": round(wall[int(len(wall) * .95)], 3),
                "cpu_mean_ms": round(sum(c for _, c in xs) / len(xs), 3)}

    def timed(fn) -> tuple[float, float]:
        c0, t0 = time.thread_time(), time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1000, (time.thread_time() - c0) * 1000

    url = pg_database(pg_url, "peftops_pg_paths")
    try:
        reg = Registry.open(url, (work / "blobs").as_uri())
        reg.register_base(make_base(work / "base"), digest=DIGEST, name="b")
        dirs = [make_adapter(work / f"p{i}", seed=5_000_000 + i) for i in range(20 + 2 * n)]
        for i, p in enumerate(dirs[:20]):  # 20 tasks; the gc epoch is known after the first
            reg.publish(f"t{i}", p, base_digest=DIGEST, method="lora")
        reg.set_alias("t0", "production", 1)
        function = reg._publish_calls
        out: dict[str, list] = {"publish_function": [], "publish_transaction": []}
        for i, p in enumerate(dirs[20:]):
            which = "publish_function" if i % 2 == 0 else "publish_transaction"
            reg._publish_calls = function if i % 2 == 0 else (lambda prepared, epoch: None)
            out[which].append(timed(lambda: reg.publish(
                f"t{i % 20}", p, base_digest=DIGEST, method="lora", metrics={"accuracy": 0.9},
                tags={"team": "team-00"})))
        reg._publish_calls = function

        def core_lookup():
            with read_one(reg.engine) as conn:
                _row_to_version(conn.execute(GET_BY_ALIAS.stmt, {
                    "task": "t0", "alias": "production"}).first())

        out.update(alias_driver=[], alias_core=[])
        for i in range(10 + 2 * n):
            if i % 2 == 0:
                r = timed(lambda: reg.get("t0", alias="production"))
            else:
                r = timed(core_lookup)
            if i >= 10:
                out["alias_driver" if i % 2 == 0 else "alias_core"].append(r)
        reg.close()
    finally:
        pg_database(pg_url, "peftops_pg_paths", drop_only=True)
    return {k: stats(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--paths", action="store_true",
                    help="also time the new publish and read paths against the old ones")
    a = ap.parse_args()
    if a.child:
        child(a.pg_url, a.child)
        return
    if shutil.which("strace") is None:
        sys.exit("pg_roundtrips: strace is not installed (apt-get install strace)")
    with tempfile.TemporaryDirectory(prefix="pg-roundtrips-") as tmp:
        trace = Path(tmp) / "trace"
        # PYTHONPATH first: the registry counted is the checkout it names, else this one.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (os.environ.get("PYTHONPATH"), str(Path(__file__).resolve().parents[1]))
            if p))
        subprocess.run(["strace", "-f", "-s", "128", "-e", "trace=recvfrom,write", "-o", str(trace),
                        sys.executable, __file__, "--pg-url", a.pg_url,
                        "--child", str(Path(tmp) / "work")],
                       check=True, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        reads = count_reads(trace)
    t = timings(a.pg_url)
    print(f"answers read per call: alias lookup {reads.get('alias_lookup', 0):g}, "
          f"publish {reads.get('publish', 0):g}")
    print(f"SELECT 1 {t['select_1']['p50_ms']} / {t['select_1']['p95_ms']} ms, INSERT + COMMIT "
          f"{t['insert_commit']['p50_ms']} / {t['insert_commit']['p95_ms']} ms (p50 / p95)")
    result = {"reads_per_call": reads, "timings": t}
    if a.paths:
        with tempfile.TemporaryDirectory(prefix="pg-paths-") as tmp:
            result["paths"] = paths(a.pg_url, Path(tmp))
        for k, v in result["paths"].items():
            print(f"{k}: {v['p50_ms']} / {v['p95_ms']} ms (p50 / p95), CPU {v['cpu_mean_ms']} ms")
    print(json.dumps(result, separators=(",", ":")))


if __name__ == "__main__":
    main()
