# .venv/bin/python bench/publish_ab.py REV [--rounds 3] [--n 1000] [--backend postgresql] [--fresh-blobs]
"""Publish rate of this tree against git revision REV, interleaved, on the same files.

A before/after check for changes to the publish path that does not depend on the machine's
speed of the day: both trees publish the same 1,000 small adapter folders, whose blobs are stored
beforehand (so the disk's file-create cost, the same for both, is left out and what is compared
is the checks plus the metadata transaction; with ``--fresh-blobs`` each round starts from an
empty blob store instead, so the blob writes are timed too, as in ``make bench-registry``), each round in a fresh process and a fresh
registry (a SQLite file, or with ``--backend postgresql`` a database of its own on --pg-url's
server, dropped afterwards), alternating A, B, A, B ... The figures are versions/s per round
(with the CPU time this process spent per publish) and the ratio of medians. REV is checked out
with ``git worktree`` into a temporary folder, removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Run in a child with the tree under test first on sys.path; prints "rate cpu_us".
CHILD = r"""
import os, sys, time
tree, work, n, pg_url, blob_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
sys.path[:0] = [tree + "/bench", tree]
import registry, registry_bench as rb
assert registry.__file__.startswith(tree), registry.__file__
from pathlib import Path
from registry import Registry
w = Path(work)
name = "peftops_publish_ab_%d" % os.getpid()
url = rb.pg_database(pg_url, name) if pg_url else f"sqlite:///{w / (name + '.db')}"
try:
    reg = Registry.open(url, Path(blob_dir).as_uri())
    reg.register_base(w / "base", digest=rb.DIGEST, name="b")
    dirs = [w / "src" / f"a{i}" for i in range(n + 20)]
    for p in dirs[:20]:  # warm-up: statement compilation, first pages
        reg.publish("warm", p, base_digest=rb.DIGEST, method="lora")
    c, t = time.thread_time(), time.perf_counter()
    for i, p in enumerate(dirs[20:]):
        reg.publish(f"task{i % 300}", p, base_digest=rb.DIGEST, method="lora",
                    metrics={"accuracy": 0.9}, tags={"team": "team-00"})
    t, c = time.perf_counter() - t, time.thread_time() - c
    reg.close()
finally:
    if pg_url:
        rb.pg_database(pg_url, name, drop_only=True)
print(n / t, c / n * 1e6)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", help="git revision to compare against (e.g. HEAD~1)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=1000, help="publishes timed per round")
    ap.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--fresh-blobs", action="store_true",
                    help="each round publishes into an empty blob store (blob writes timed)")
    ap.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="PostgreSQL server (--backend postgresql)")
    a = ap.parse_args()
    sys.path[:0] = [str(REPO / "bench"), str(REPO)]
    import registry_bench as rb

    from registry.adapter import scan_adapter
    from registry.blobs import FileBlobStore

    with tempfile.TemporaryDirectory(prefix="publish-ab-") as tmp:
        tmp = Path(tmp)
        old = tmp / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(old), a.rev],
                       check=True)
        try:
            work = tmp / "work"
            rb.make_base(work / "base")
            blobs = FileBlobStore(work / "blobs")
            for i in range(a.n + 20):
                folder = scan_adapter(rb.make_adapter(work / "src" / f"a{i}", seed=i))
                for name, e in folder.files.items():
                    blobs.put(folder.path / name, e["sha256"])
            rates: dict[str, list[float]] = {a.rev: [], "this tree": []}
            cpu: dict[str, list[float]] = {a.rev: [], "this tree": []}
            pg_url = a.pg_url if a.backend == "postgresql" else ""
            for r in range(a.rounds):
                for label, tree in ((a.rev, old), ("this tree", REPO)):
                    blob_dir = work / "blobs"
                    if a.fresh_blobs:
                        blob_dir = work / f"blobs-{r}-{'a' if tree == old else 'b'}"
                        os.sync()  # no writeback of the last round's blobs during this one
                    out = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(work),
                                          str(a.n), pg_url, str(blob_dir)],
                                         check=True, capture_output=True, text=True)
                    if a.fresh_blobs:
                        shutil.rmtree(blob_dir)
                    rate, cpu_us = out.stdout.strip().splitlines()[-1].split()
                    rates[label].append(float(rate))
                    cpu[label].append(float(cpu_us))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=False)
    print(f"{a.backend}, {a.n} publishes a round, "
          + ("into an empty blob store" if a.fresh_blobs else "blobs stored beforehand"))
    for label, xs in rates.items():
        print(f"{label:>12}: " + ", ".join(f"{x:,.0f}" for x in xs) + " versions/s; CPU "
              + ", ".join(f"{x:,.0f}" for x in cpu[label]) + " µs a publish in this process")
    ratio = statistics.median(rates["this tree"]) / statistics.median(rates[a.rev])
    print(f"this tree / {a.rev}: {ratio:.2f}x (medians)")


if __name__ == "__main__":
    main()
