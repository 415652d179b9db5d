# .venv/bin/python bench/search_ab.py [--backend postgresql] [--tasks 10000] [--repeats 300]
"""Search pages read with the task's name from the version row (migration 0004) against the
same searches joined to tasks for it (as before 0004), interleaved call by call on one registry.

What it isolates: the statement alone. Both variants run in one process on the same synthesized
registry (``registry_bench.synthesize``, 10 versions per task), alternating A B B A, so the
machine's speed of the moment falls on both alike. The join variant is the current statement
builder with ``versions_select`` joining tasks and selecting ``tasks.name``, which is what the
statements were before 0004. Prints p50 / p95 wall time per query for both and their ratios,
on PostgreSQL also one ``EXPLAIN (ANALYZE, BUFFERS)`` of each statement (buffer hits, planning
and execution time), then one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import registry_bench as rb  # noqa: E402
from sqlalchemy import select  # noqa: E402

from registry import Registry, db, query  # noqa: E402

JOIN_COLUMNS = (query.VERSION_COLUMNS[0], db.tasks.c.name) + query.VERSION_COLUMNS[2:]


def _join_select(by_task: bool = False):
    """versions_select as before migration 0004: the name from a join to tasks, whatever the
    filter (by_task is taken only to keep versions_select's signature)."""
    return select(*JOIN_COLUMNS).select_from(
        db.versions.join(db.tasks, db.tasks.c.id == db.versions.c.task_id))


# Each variant's own statement cache, swapped in with its versions_select.
_CACHES: dict[bool, dict] = {False: {}, True: {}}


@contextlib.contextmanager
def _statements(join: bool):
    """Searches inside build their statements as one variant does (the join, or the copy)."""
    saved_sel, saved_cache = query.versions_select, query._SEARCH_CACHE
    query.versions_select = _join_select if join else saved_sel
    query._SEARCH_CACHE = _CACHES[join]
    try:
        yield
    finally:
        query.versions_select, query._SEARCH_CACHE = saved_sel, saved_cache


def _variant(reg: Registry, join: bool, filters: dict):
    """One search page (100) for the filters, with the statements of one variant."""
    with _statements(join):
        return reg.search(limit=100, **filters)


def _explain(reg: Registry, join: bool, filters: dict) -> dict:
    """PostgreSQL's EXPLAIN (ANALYZE, BUFFERS) of one variant's search statement for the
    filters (build_search's keywords): shared-buffer hits, planning and execution time. One
    execution each: a single observation, printed beside the timed figures."""
    with _statements(join):
        stmt, params, _, _ = query.build_search(limit=100, **filters)
    r = stmt.rendered(reg.engine.dialect, params)
    raw = reg.engine.raw_connection()
    try:
        cur = raw.driver_connection.cursor()
        plan = cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + r.sql,
                           r.params(params)).fetchone()[0][0]
        raw.driver_connection.rollback()
    finally:
        raw.close()
    return {"buffer_hits": plan["Plan"]["Shared Hit Blocks"],
            "planning_ms": round(plan["Planning Time"], 3),
            "execution_ms": round(plan["Execution Time"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["sqlite", "postgresql"], default="postgresql")
    ap.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--pg-db", default="peftops_bench_search_ab",
                    help="database made (and dropped) on --pg-url's server")
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=300)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="peftops-search-ab-"))
    name = a.pg_db
    url = (rb.pg_database(a.pg_url, name) if a.backend == "postgresql"
           else f"sqlite:///{work / 'r.db'}")
    try:
        reg = Registry.open(url, (work / "blobs").as_uri())
        reg.register_base(rb.make_base(work / "base"), digest=rb.DIGEST, name="bench-base")
        rb.synthesize(reg, a.tasks, 10, rb.blob_pool(reg, work, 200))
        rng = random.Random(5)
        # Each query: its filters as a function of one value, and the values to draw.
        searches = {
            "filter_by_tag": (lambda t: {"tag": ("team", t)}, rb.TEAMS),
            "filter_by_method": (lambda m: {"method": m}, ["dora", "ia3", "lora"]),
            "metric_threshold": (lambda x: {"metric": ("accuracy", ">=", x)},
                                 [0.6, 0.7, 0.8, 0.9]),
        }
        out: dict[str, dict] = {}
        for q, (filters, values) in searches.items():
            draws = [filters(rng.choice(values)) for _ in range(a.repeats)]
            for f in draws[:20]:  # warm both: statement caches, prepared statements
                _variant(reg, False, f), _variant(reg, True, f)
            assert ([v.task for v in _variant(reg, False, draws[0]).items] ==
                    [v.task for v in _variant(reg, True, draws[0]).items])
            took: dict[str, list[float]] = {"copy": [], "join": []}
            for i, f in enumerate(draws):
                order = (("copy", False), ("join", True))
                for side, join in (order if i % 2 == 0 else order[::-1]):
                    t0 = time.perf_counter()
                    _variant(reg, join, f)
                    took[side].append(time.perf_counter() - t0)
            stats = {}
            for side, xs in took.items():
                xs.sort()
                stats[side] = {"p50_ms": round(xs[len(xs) // 2] * 1e3, 3),
                               "p95_ms": round(xs[int(len(xs) * 0.95)] * 1e3, 3)}
            stats["join_over_copy_p50"] = round(stats["join"]["p50_ms"] /
                                                stats["copy"]["p50_ms"], 2)
            stats["join_over_copy_p95"] = round(stats["join"]["p95_ms"] /
                                                stats["copy"]["p95_ms"], 2)
            out[q] = stats
            print(f"{q:18s} copy {stats['copy']['p50_ms']:.3f} / {stats['copy']['p95_ms']:.3f}"
                  f" ms   join {stats['join']['p50_ms']:.3f} / {stats['join']['p95_ms']:.3f} ms"
                  f"   join/copy p50 {stats['join_over_copy_p50']}x"
                  f" p95 {stats['join_over_copy_p95']}x", flush=True)
            if a.backend == "postgresql":
                stats["explain"] = {side: _explain(reg, join, draws[0])
                                    for side, join in (("copy", False), ("join", True))}
                print("  EXPLAIN (ANALYZE, BUFFERS), one execution each: " + "; ".join(
                    f"{side} {e['buffer_hits']} buffer hits, planning {e['planning_ms']} ms, "
                    f"execution {e['execution_ms']} ms" for side, e in stats["explain"].items()),
                      flush=True)
        reg.close()
        print(json.dumps({"backend": a.backend, "versions": a.tasks * 10,
                          "cpu_probe_s": rb.cpu_probe(), "queries": out}))
    finally:
        if a.backend == "postgresql":
            rb.pg_database(a.pg_url, name, drop_only=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
