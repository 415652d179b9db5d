"""8 processes each publish 100 versions to the same tasks: 800 distinct versions, none
lost or duplicated, on SQLite and on PostgreSQL."""

import multiprocessing as mp
import time
from collections import defaultdict

from regtestlib import DIGEST, make_base, publish_many

from registry import Registry

WORKERS, PER_WORKER = 8, 100
TASKS = ["alpha", "beta", "gamma", "delta"]


def _run(db_url, tmp_path):
    blob_uri = (tmp_path / "blobs").as_uri()
    with Registry.open(db_url, blob_uri) as reg:  # migrate once up front, like a deploy
        reg.register_base(make_base(tmp_path / "base"), digest=DIGEST)
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    with ctx.Pool(WORKERS) as pool:
        results = pool.starmap(publish_many, [
            (db_url, blob_uri, w, PER_WORKER, TASKS, str(tmp_path / "src"))
            for w in range(WORKERS)])
    elapsed = time.perf_counter() - t0

    published = [r for rs in results for r in rs]
    assert len(published) == WORKERS * PER_WORKER
    assert len({(t, v) for t, v, _ in published}) == WORKERS * PER_WORKER  # no duplicates
    assert len({a for _, _, a in published}) == WORKERS * PER_WORKER
    with Registry.open(db_url, blob_uri) as reg:
        assert reg.count_versions() == WORKERS * PER_WORKER  # none lost
        by_task = defaultdict(list)
        for task in TASKS:
            token = None
            while True:
                page = reg.search(task=task, limit=1000, page_token=token)
                by_task[task] += [v.version for v in page]
                token = page.next_page_token
                if token is None:
                    break
        for task in TASKS:  # numbers are dense: 1..n, each once
            assert sorted(by_task[task]) == list(range(1, len(by_task[task]) + 1))
        assert sum(len(v) for v in by_task.values()) == WORKERS * PER_WORKER
        tasks = {t.name: t for t in reg.list_tasks()}
        assert all(tasks[n].n_versions == tasks[n].latest_version == len(by_task[n])
                   for n in TASKS)
    return elapsed


def test_concurrent_publish_sqlite(tmp_path):
    _run(f"sqlite:///{tmp_path / 'reg.db'}", tmp_path)


def test_concurrent_publish_postgres(tmp_path, pg_url):
    _run(pg_url, tmp_path)
