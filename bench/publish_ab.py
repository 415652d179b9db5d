# .venv/bin/python bench/publish_ab.py REV [--rounds 3] [--n 1000] [--backend postgresql]
#                                           [--fresh-blobs] [--in-process]
"""Publish rate of this tree against git revision REV, interleaved, on the same files.

A before/after check for changes to the publish path that does not depend on the machine's
speed of the day: both trees publish the same 1,000 small adapter folders, whose blobs are stored
beforehand (so the disk's file-create cost, the same for both, is left out and what is compared
is the checks plus the metadata transaction; with ``--fresh-blobs`` each round starts from an
empty blob store instead, so the blob writes are timed too, as in ``make bench-registry``), each
round in a fresh process and a fresh registry (a SQLite file, or with ``--backend postgresql``
a database of its own on --pg-url's server, dropped afterwards), alternating A, B, A, B ...
The figures are versions/s per round (with the CPU time this process spent per publish) and the
ratio of medians. REV is checked out with ``git worktree`` into a temporary folder, removed
afterwards.

``--in-process``: one process instead, REV's ``registry`` package imported under another name
(``registry_rev``; its relative imports keep it whole, its migrations are run by this tree's
alembic environment, so REV must have the same schema), each tree a registry of its own, and
the publishes alternating call by call (A B B A ...) into fresh blob stores: the machine's speed
of the moment falls on both alike, which separate processes minutes apart do not give on a
shared host. The figures: wall p50 and mean, CPU mean, and the ratio of the means.
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
tree, work, n, pg_url, blob_dir = sys.argv[1:3] + [int(sys.argv[3])] + sys.argv[4:6]
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


INPROC = r"""
import os, statistics, sys, time
rev_root, work, n, pg_url = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.path[:0] = [rev_root]
import registry, registry_bench as rb, registry_rev
from pathlib import Path
w = Path(work)
regs, dbs = {}, []
try:
    for label, mod in (("rev", registry_rev), ("this tree", registry)):
        name = "peftops_publish_ab_%s_%d" % (label[0], os.getpid())
        url = rb.pg_database(pg_url, name) if pg_url else f"sqlite:///{w / (name + '.db')}"
        dbs += [name] if pg_url else []
        regs[label] = mod.Registry.open(url, (w / ("blobs-" + name)).as_uri())
        regs[label].register_base(w / "base", digest=rb.DIGEST, name="b")
    dirs = [w / "src" / f"a{i}" for i in range(2 * n + 40)]
    for i, p in enumerate(dirs[:40]):  # warm-up: statement compilation, first pages
        regs["rev" if i % 2 else "this tree"].publish("warm", p, base_digest=rb.DIGEST,
                                                       method="lora")
    os.sync()
    wall = {k: [] for k in regs}
    cpu = {k: [] for k in regs}
    for i, p in enumerate(dirs[40:]):
        label = "rev" if (i // 2) % 2 == i % 2 else "this tree"  # A B B A
        c, t = time.thread_time(), time.perf_counter()
        regs[label].publish(f"task{i % 300}", p, base_digest=rb.DIGEST, method="lora",
                            metrics={"accuracy": 0.9}, tags={"team": "team-00"})
        wall[label].append(time.perf_counter() - t)
        cpu[label].append(time.thread_time() - c)
    for r in regs.values():
        r.close()
finally:
    for name in dbs:
        rb.pg_database(pg_url, name, drop_only=True)
for k in regs:
    print(k, statistics.median(wall[k]) * 1e6, statistics.mean(wall[k]) * 1e6,
          statistics.mean(cpu[k]) * 1e6)
"""


def in_process(a, old: Path, work: Path, pg_url: str) -> None:
    """--in-process: REV's registry package as registry_rev, both in one child process."""
    rev_root = work / "rev"
    shutil.copytree(old / "registry", rev_root / "registry_rev")
    out = subprocess.run([sys.executable, "-c", INPROC, str(rev_root), str(work),
                          str(a.n), pg_url], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": f"{REPO / 'bench'}:{REPO}"})
    res = {}
    for line in out.stdout.strip().splitlines()[-2:]:
        label, p50, mean, cpu = line.rsplit(" ", 3)
        res[label] = (float(p50), float(mean), float(cpu))
    print(f"{a.backend}, {a.n} publishes each, alternating call by call in one process, "
          "fresh blob stores")
    for label, (p50, mean, cpu) in res.items():
        name = a.rev if label == "rev" else label
        print(f"{name:>12}: wall p50 {p50:,.0f} µs, mean {mean:,.0f} µs; CPU mean {cpu:,.0f} µs")
    print(f"this tree / {a.rev}: {res['this tree'][1] / res['rev'][1]:.3f} of the mean wall "
          f"time, {res['this tree'][2] / res['rev'][2]:.3f} of the CPU")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", help="git revision to compare against (e.g. HEAD~1)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=1000, help="publishes timed per round")
    ap.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--in-process", action="store_true",
                    help="both trees in one process, alternating call by call (see above)")
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
            pg_url = a.pg_url if a.backend == "postgresql" else ""
            if a.in_process:
                for i in range(2 * a.n + 40):
                    rb.make_adapter(work / "src" / f"a{i}", seed=i)
                in_process(a, old, work, pg_url)
                return
            blobs = FileBlobStore(work / "blobs")
            for i in range(a.n + 20):
                folder = scan_adapter(rb.make_adapter(work / "src" / f"a{i}", seed=i))
                for name, e in folder.files.items():
                    blobs.put(folder.path / name, e["sha256"])
            rates: dict[str, list[float]] = {a.rev: [], "this tree": []}
            cpu: dict[str, list[float]] = {a.rev: [], "this tree": []}
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
