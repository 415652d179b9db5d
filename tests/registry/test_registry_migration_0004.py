"""Migration 0004 (the task's name copied onto each version row) on a registry that already
holds versions: the copies are filled from the tasks, reads and both publish paths use them,
and the downgrade restores 0003's schema and function."""

import json

from alembic import command
from regtestlib import DIGEST, make_adapter, make_base
from sqlalchemy import inspect, text

from registry import Registry
from registry.engine import _alembic_config, create_registry_engine, upgrade, write_tx
from registry.shapes import module_shapes_from_state_dict

_T0 = "2026-01-01 00:00:00"


def _at_0003_with_versions(url: str, base) -> None:
    """A registry migrated to 0003 only, with two tasks and three versions written as 0003's
    code wrote them (no task_name column yet)."""
    engine = create_registry_engine(url)
    upgrade(engine, "0003")
    with write_tx(engine) as conn:
        conn.execute(text("INSERT INTO registry_bases (digest, name, module_shapes, config, "
                          "created_at) VALUES (:d, 'b', :s, '{}', :t)"),
                     {"d": DIGEST, "t": _T0,
                      "s": json.dumps(module_shapes_from_state_dict(base))})
        for tid, name, n in ((1, "alpha", 2), (2, "beta", 1)):
            conn.execute(text("INSERT INTO registry_tasks (id, name, base_digest, latest_version,"
                              " n_versions, created_at, updated_at) VALUES (:i, :n, :d, :k, :k, "
                              ":t, :t)"), {"i": tid, "n": name, "d": DIGEST, "k": n, "t": _T0})
        for vid, tid, ver in ((1, 1, 1), (2, 1, 2), (3, 2, 1)):
            conn.execute(text(
                "INSERT INTO registry_versions (id, task_id, version, adapter_id, base_digest, "
                "method, status, vllm_servable, created_at, files, lint, lineage, tags, metrics,"
                " aliases) VALUES (:v, :t, :n, :a, :d, 'lora', 'active', true, :c, '{}', '[]',"
                " '{}', '{}', '{}', '[]')"),
                {"v": vid, "t": tid, "n": ver, "a": f"{vid:064x}", "d": DIGEST, "c": _T0})
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT setval(pg_get_serial_sequence('registry_versions', 'id'),"
                              " 3)"))
            conn.execute(text("SELECT setval(pg_get_serial_sequence('registry_tasks', 'id'),"
                              " 2)"))
    engine.dispose()


def _copies(url: str) -> list[tuple]:
    engine = create_registry_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT t.name, v.task_name, v.version FROM registry_versions v "
            "JOIN registry_tasks t ON t.id = v.task_id ORDER BY v.id")).all()
    engine.dispose()
    return [tuple(r) for r in rows]


def test_upgrade_fills_the_copies_and_reads_and_publishes_use_them(tmp_path, any_url):
    url = any_url
    _at_0003_with_versions(url, make_base(tmp_path / "base"))
    reg = Registry.open(url, (tmp_path / "blobs").as_uri())  # upgrades to head
    assert _copies(url) == [("alpha", "alpha", 1), ("alpha", "alpha", 2), ("beta", "beta", 1)]
    # Reads that no longer join tasks name each version's own task.
    assert [(v.task, v.version) for v in reg.search(method="lora").items] == \
        [("beta", 1), ("alpha", 2), ("alpha", 1)]
    assert reg.get("alpha", 2).task == "alpha"
    # A new version (on PostgreSQL through the replaced registry_publish(); the first publish
    # of a process learns the gc epoch through the transaction path, the second uses the
    # function) and a new task carry their copies too.
    reg.publish("beta", make_adapter(tmp_path / "a1", seed=1), base_digest=DIGEST,
                method="lora")
    reg.publish("gamma", make_adapter(tmp_path / "a2", seed=2), base_digest=DIGEST,
                method="lora", tags={"team": "x"})
    reg.publish("gamma", make_adapter(tmp_path / "a3", seed=3), base_digest=DIGEST,
                method="lora", tags={"team": "x"})
    assert _copies(url)[3:] == [("beta", "beta", 2), ("gamma", "gamma", 1),
                                ("gamma", "gamma", 2)]
    assert [(v.task, v.version) for v in reg.search(tag=("team", "x")).items] == \
        [("gamma", 2), ("gamma", 1)]
    reg.close()


def test_downgrade_restores_0003(tmp_path, any_url):
    url = any_url
    _at_0003_with_versions(url, make_base(tmp_path / "base"))
    engine = create_registry_engine(url)
    upgrade(engine)
    with write_tx(engine) as conn:
        command.downgrade(_alembic_config(conn), "0003")
    with engine.connect() as conn:
        cols = [c["name"] for c in inspect(conn).get_columns("registry_versions")]
        assert "task_name" not in cols and "version" in cols
        if conn.dialect.name == "postgresql":
            body = conn.execute(text("SELECT prosrc FROM pg_proc WHERE proname = "
                                     "'registry_publish'")).scalar_one()
            assert "task_name" not in body and "INSERT INTO registry_versions" in body
    engine.dispose()
