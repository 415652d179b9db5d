"""PostgreSQL's one-statement publish (registry_publish(), migration 0003) against the
transaction it stands in for (Registry._record): the same rows, the same refusals, and no
version row without its blobs when a gc runs in between."""

import dataclasses
import multiprocessing as mp
import os
from pathlib import Path

import pytest
from regtestlib import DIGEST, OTHER_DIGEST, make_adapter, make_base
from sqlalchemy import create_engine, text

from registry import BasePinMismatch, PublishRequest, Registry
from registry.engine import normalize_url

USER = os.environ.get("USER")  # the actor recorded when none is given

# Every registry table but the bases, by natural keys (task name, version number), not by
# ids: a batch rolled back has used sequence numbers that the transaction path then skips.
# Time stamps are left out (two runs).
_V = "registry_versions v JOIN registry_tasks t ON t.id = v.task_id"
DUMPS = {
    "tasks": "SELECT name, base_digest, latest_version, n_versions FROM registry_tasks "
             "ORDER BY name",
    "versions": f"SELECT t.name, v.task_name, v.version, v.adapter_id, v.base_digest, v.method, v.status, "
                f"v.vllm_servable, v.files, v.lint, v.lineage, v.tags, v.metrics, v.aliases "
                f"FROM {_V} ORDER BY 1, 3",
    "tags": f"SELECT t.name, v.version, g.key, g.value FROM registry_version_tags g "
            f"JOIN {_V} ON v.id = g.version_id ORDER BY 1, 2, 3",
    "metrics": f"SELECT t.name, v.version, m.key, m.value FROM registry_version_metrics m "
               f"JOIN {_V} ON v.id = m.version_id ORDER BY 1, 2, 3",
    "aliases": f"SELECT t.name, a.alias, v.version FROM registry_aliases a "
               f"JOIN {_V} ON v.id = a.version_id ORDER BY 1, 2",
    "history": "SELECT t.name, h.alias, h.from_version, h.to_version, h.actor "
               "FROM registry_alias_history h JOIN registry_tasks t ON t.id = h.task_id "
               "ORDER BY h.id",
}


def _dump(url: str) -> dict[str, list[tuple]]:
    engine = create_engine(normalize_url(url))
    with engine.connect() as conn:
        out = {k: [tuple(r) for r in conn.execute(text(q))] for k, q in DUMPS.items()}
    engine.dispose()
    return out


class _Outcomes:
    """Wraps Registry._publish_calls: what each publish got back (None: left to _record)."""

    def __init__(self, reg: Registry, disable: bool = False):
        self.seen: list = []
        orig = reg._publish_calls

        def call(p, epoch):
            out = None if disable else orig(p, epoch)
            self.seen.append(out)
            return out

        reg._publish_calls = call


def _scenario(reg: Registry, tmp_path) -> list:
    """Every kind of publish: new tasks, tags and metrics (non-ASCII text, floats whose
    decimal form is long), aliases created and moved from older versions, identical content
    again (with and without tags), a task pinned to another base."""
    src = tmp_path / "src"
    a = [make_adapter(src / f"a{i}", seed=100 + i) for i in range(10)]
    reg.publish("warm", make_adapter(src / "warm", seed=99), base_digest=DIGEST,
                method="lora")  # the first call of a process learns the gc epoch
    out = [
        reg.publish("t1", a[0], base_digest=DIGEST, method="lora",
                    tags={"team": "vision", "note": "é ü \u2603 \U0001F600 \"q\" \\"},
                    metrics={"acc": 0.1 + 0.2, "loss": 1e-7, "big": 12345678.9, "neg": -3.0},
                    lineage={"git_commit": "abc", "hyperparameters": {"r": 4}},
                    aliases=["production"], actor="alice"),
        reg.publish("t1", a[1], base_digest=DIGEST, method="dora",
                    aliases=["staging", "production"], actor="bob"),
        reg.publish("t1", a[2], base_digest=DIGEST, method="lora", tags={"team": "x"},
                    aliases=["staging"], actor="carol"),
        reg.publish("t2", a[3], base_digest=DIGEST, method="ia3", metrics={"acc": 0.5}),
        reg.publish("t1", a[0], base_digest=DIGEST, method="lora"),  # same content, nothing to set
        reg.publish("t1", a[1], base_digest=DIGEST, method="lora", tags={"team": "later"}),
    ]
    with pytest.raises(BasePinMismatch):
        reg.publish("t2", a[4], base_digest=OTHER_DIGEST, method="lora")
    out.append(reg.publish("t3", a[5], base_digest=DIGEST, method="lora", aliases=["canary"],
                           actor="dave"))
    # Batches: one transaction of calls; one that holds a publish the function leaves to
    # the transaction path is recorded there as a whole.
    out += [v for v, _ in reg.publish_many([
        PublishRequest("t4", a[6], DIGEST, "lora", tags={"k": "1"}, aliases=["production"]),
        PublishRequest("t4", a[7], DIGEST, "lora", metrics={"m": 2.5}, aliases=["production"]),
        PublishRequest("t4", a[6], DIGEST, "lora")])]
    out += [v for v, _ in reg.publish_many([
        PublishRequest("t5", a[8], DIGEST, "lora"),
        PublishRequest("t1", a[2], DIGEST, "lora", tags={"team": "again"})])]
    return out


def test_function_path_writes_the_rows_of_the_transaction_path(tmp_path, pg_urls):
    dumps, versions, outcomes = [], [], []
    for disable in (False, True):
        url = pg_urls()
        run = tmp_path / ("general" if disable else "function")
        reg = Registry.open(url, (run / "blobs").as_uri())
        reg.register_base(make_base(tmp_path / "base"), digest=DIGEST)
        reg.register_base(make_base(tmp_path / "other", seed=1), digest=OTHER_DIGEST)
        seen = _Outcomes(reg, disable=disable)
        versions.append(_scenario(reg, run))
        outcomes.append(seen.seen)
        report = reg.verify()
        assert report["missing"] == report["corrupt"] == []
        assert len(report["unreferenced"]) == 2  # the refused publish's blobs, for gc
        reg.close()
        dumps.append(_dump(url))
    fast = outcomes[0]
    # The warm-up learns the epoch; the function then records every new version and answers
    # an identical re-publish with nothing to set; tags to set on it go to the transaction.
    assert fast[0] is None
    assert fast[1:] == [[(1, True)], [(2, True)], [(3, True)], [(1, True)], [(1, False)],
                        None, None, [(1, True)], [(1, True), (2, True), (1, False)], None]
    # What publish returned, but for the time stamps of two runs.
    assert [dataclasses.replace(v, created_at=None) for v in versions[0]] == \
        [dataclasses.replace(v, created_at=None) for v in versions[1]]
    assert dumps[0] == dumps[1]
    # And they are the rows intended, not the same mistake twice.
    d = dumps[0]
    assert d["aliases"] == [("t1", "production", 2), ("t1", "staging", 3),
                            ("t3", "canary", 1), ("t4", "production", 2)]
    # The copy of the task's name on each version row is its task's (migration 0004).
    assert all(t == copy for t, copy, *_ in d["versions"])
    assert [(t, v, aliases) for t, _, v, *_, aliases in d["versions"]] == [
        ("t1", 1, "[]"), ("t1", 2, '["production"]'), ("t1", 3, '["staging"]'),
        ("t2", 1, "[]"), ("t3", 1, '["canary"]'), ("t4", 1, "[]"), ("t4", 2, '["production"]'),
        ("t5", 1, "[]"), ("warm", 1, "[]")]
    assert [h[1:] for h in d["history"]] == [
        ("production", None, 1, "alice"), ("production", 1, 2, "bob"),
        ("staging", None, 2, "bob"), ("staging", 2, 3, "carol"), ("canary", None, 1, "dave"),
        ("production", None, 1, USER), ("production", 1, 2, USER)]
    metrics = {(k, v) for _, _, k, v in d["metrics"]}
    assert {("acc", 0.1 + 0.2), ("loss", 1e-7), ("big", 12345678.9), ("m", 2.5)} <= metrics
    assert ("t1", 1, "note", "é ü \u2603 \U0001F600 \"q\" \\") in d["tags"]
    assert ("t1", 3, "team", "again") in d["tags"]


def test_gc_between_blob_store_and_record_goes_to_the_checked_transaction(tmp_path, pg_url):
    """A gc run after publish stored its blobs and before it records them (here from another
    registry instance, as another process would) deletes them; the function sees the epoch
    moved and leaves the publish to the transaction, which stores them again."""
    blobs = (tmp_path / "blobs").as_uri()
    reg = Registry.open(pg_url, blobs)
    reg.register_base(make_base(tmp_path / "base"), digest=DIGEST)
    other = Registry.open(pg_url, blobs)
    reg.publish("t", make_adapter(tmp_path / "warm", seed=1), base_digest=DIGEST, method="lora")
    seen = _Outcomes(reg)
    orig, removed = reg.blobs.put, []

    def put_then_gc(src, sha, data=None):
        orig(src, sha, data)
        if src.name == "adapter_model.safetensors" and not removed:
            removed.append(other.gc())

    reg.blobs.put = put_then_gc
    v = reg.publish("t", make_adapter(tmp_path / "a", seed=2), base_digest=DIGEST,
                    method="lora")
    reg.blobs.put = orig
    assert removed == [2] and seen.seen == [None]  # both blobs deleted; the epoch had moved
    reg.fetch("t", v.version, dest=tmp_path / "out")  # stored again before the row
    assert reg.verify()["missing"] == []
    # The epoch is current again: the next publish is one call.
    reg.publish("t", make_adapter(tmp_path / "b", seed=3), base_digest=DIGEST, method="lora")
    assert seen.seen[-1] == [(3, True)]
    other.close()
    reg.close()


def _publish_same(url: str, blobs: str, folder: str, barrier) -> tuple[int, bool]:
    with Registry.open(url, blobs) as reg:
        # Learn the gc epoch first, so that the publish timed together is one call.
        reg.publish("warm", make_adapter(Path(f"{folder}-warm-{os.getpid()}"), seed=7),
                    base_digest=DIGEST, method="lora")
        barrier.wait(60)
        v, created = reg.publish_or_get("new-task", folder, base_digest=DIGEST, method="lora",
                                        metrics={"acc": 0.9})
        return v.version, created


def test_concurrent_publishes_of_the_same_content_record_it_once(tmp_path, pg_url):
    """Four processes publish the same folder to a task that does not exist yet, at once:
    one version, one of them told it created it, all given its number."""
    blobs = (tmp_path / "blobs").as_uri()
    with Registry.open(pg_url, blobs) as reg:
        reg.register_base(make_base(tmp_path / "base"), digest=DIGEST)
    folder = make_adapter(tmp_path / "same", seed=5)
    ctx = mp.get_context("spawn")
    with ctx.Manager() as m:
        barrier = m.Barrier(4)
        with ctx.Pool(4) as pool:
            got = pool.starmap(_publish_same, [(pg_url, blobs, str(folder), barrier)] * 4)
    assert sorted(got) == [(1, False)] * 3 + [(1, True)]
    with Registry.open(pg_url, blobs) as reg:
        assert [v.version for v in reg.versions("new-task")] == [1]
        assert reg.get_task("new-task").n_versions == 1
