"""Publish in one statement on PostgreSQL: registry_publish(), and gc's epoch.

On PostgreSQL a publish's transaction was five answers from the server (``python
bench/pg_roundtrips.py``) and ~1 ms of the client's CPU in the driver's pipeline machinery.
registry_publish() records a new version the way ``Registry._record`` does (shared lock, task
row created or locked, version, tags, metrics, task counters, aliases with their history), as
one call that the client runs in autocommit, so the call, its statements and its commit are
one round trip. Measured, same session, the metadata transaction of one publish: ~1.5 ms ->
~0.65 ms wall, ~0.95 -> ~0.2 ms of client CPU (see BENCHMARKS.md, "publish in one statement").

It handles the common case only and otherwise writes nothing and answers 'general', for the
client to run its ordinary transaction (``Registry._record``): content already published with
tags or aliases to set on it, a task pinned to another base (which that path refuses), and a
stale gc epoch. The epoch is what keeps "no version row without its blob" without the
client checking its blobs inside the transaction: gc increments registry_lock.gc_epoch in the
transaction that holds the exclusive lock while it deletes blobs; the client passes the epoch
it had read before it stored this publish's blobs, and the function compares it, under the
shared lock, with the current one. Equal: no gc has deleted anything since the blobs were
stored, so they are all there. Different: 'general', whose transaction checks (and restores)
each blob under the lock, as before.

Alias JSON is rebuilt here as the client's canonical JSON (sorted, no spaces): alias names
are ASCII letters, digits, '_' and '-' (registry.names), which JSON needs no escapes for and
byte order sorts as Python does. tests/registry/test_registry_publish_function.py checks that
both paths write the same rows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

PUBLISH_FUNCTION = r"""
CREATE OR REPLACE FUNCTION registry_publish(
    p_task text, p_epoch bigint, p_adapter_id text, p_base_digest text, p_method text,
    p_vllm_servable boolean, p_created_at timestamp, p_files text, p_lint text,
    p_lineage text, p_tags text, p_metrics text, p_aliases text, p_actor text,
    OUT outcome text, OUT version_number integer, OUT epoch bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_task bigint;
    v_pinned text;
    v_latest integer;
    v_id bigint;
    v_alias text;
    v_old bigint;
    v_from integer;
BEGIN
    -- Shared: concurrent publishes go on together, gc waits for them (and they for it).
    SELECT l.gc_epoch INTO epoch FROM registry_lock l WHERE l.id = 1 FOR SHARE;
    IF p_epoch IS DISTINCT FROM epoch THEN
        outcome := 'general';  -- a gc ran since the blobs were stored, or the epoch is unknown
        RETURN;
    END IF;

    SELECT t.id, t.base_digest, t.latest_version INTO v_task, v_pinned, v_latest
        FROM registry_tasks t WHERE t.name = p_task FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO registry_tasks (name, base_digest, latest_version, n_versions, created_at,
                                    updated_at)
            VALUES (p_task, p_base_digest, 0, 0, p_created_at, p_created_at)
            ON CONFLICT (name) DO NOTHING;
        SELECT t.id, t.base_digest, t.latest_version INTO v_task, v_pinned, v_latest
            FROM registry_tasks t WHERE t.name = p_task FOR UPDATE;
    END IF;
    IF v_pinned <> p_base_digest THEN
        outcome := 'general';  -- refused there, with the message
        RETURN;
    END IF;

    -- Read after the task row is locked: a publisher of the same content that held the
    -- lock has committed by now, and this statement sees its version.
    SELECT v.version INTO version_number FROM registry_versions v
        WHERE v.task_id = v_task AND v.adapter_id = p_adapter_id;
    IF FOUND THEN
        outcome := CASE WHEN p_tags = '{}' AND p_aliases = '[]' THEN 'existing'
                        ELSE 'general' END;
        RETURN;
    END IF;

    version_number := v_latest + 1;
    INSERT INTO registry_versions (task_id, version, adapter_id, base_digest, method, status,
                                   vllm_servable, created_at, files, lint, lineage, tags,
                                   metrics, aliases)
        VALUES (v_task, version_number, p_adapter_id, p_base_digest, p_method, 'active',
                p_vllm_servable, p_created_at, p_files, p_lint, p_lineage, p_tags, p_metrics,
                p_aliases)
        RETURNING id INTO v_id;
    -- The rows come from the JSON copies the version row stores, so the two cannot differ
    -- (a float's shortest repr, as the client's JSON writes it, reads back as the same float8).
    INSERT INTO registry_version_tags (version_id, key, value)
        SELECT v_id, j.key, j.value FROM json_each_text(p_tags::json) AS j;
    INSERT INTO registry_version_metrics (version_id, key, value)
        SELECT v_id, j.key, j.value::float8 FROM json_each_text(p_metrics::json) AS j;
    UPDATE registry_tasks SET latest_version = version_number, n_versions = n_versions + 1,
                              updated_at = p_created_at
        WHERE id = v_task;

    -- Each alias moves here from the version that held it (if any), as Registry._move_alias
    -- does: the row, the JSON copies on both versions, one history entry. p_aliases is
    -- already the new version's JSON copy (sorted: the order of the history entries).
    FOR v_alias IN SELECT json_array_elements_text(p_aliases::json) LOOP
        v_from := NULL;
        DELETE FROM registry_aliases a WHERE a.task_id = v_task AND a.alias = v_alias
            RETURNING a.version_id INTO v_old;
        IF FOUND THEN
            UPDATE registry_versions v SET aliases = (
                    SELECT coalesce('[' || string_agg(to_json(e.name)::text, ','
                                                      ORDER BY e.name COLLATE "C") || ']', '[]')
                    FROM (SELECT DISTINCT x AS name
                          FROM json_array_elements_text(v.aliases::json) AS x
                          WHERE x <> v_alias) AS e)
                WHERE v.id = v_old
                RETURNING v.version INTO v_from;
        END IF;
        INSERT INTO registry_aliases (task_id, alias, version_id)
            VALUES (v_task, v_alias, v_id);
        INSERT INTO registry_alias_history (task_id, alias, from_version, to_version, actor,
                                            moved_at)
            VALUES (v_task, v_alias, v_from, version_number, p_actor, p_created_at);
    END LOOP;
    outcome := 'created';
END
$$
"""


def upgrade() -> None:
    op.add_column("registry_lock", sa.Column("gc_epoch", sa.BigInteger(), nullable=False,
                                             server_default="0"))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PUBLISH_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS registry_publish")
    with op.batch_alter_table("registry_lock") as batch:
        batch.drop_column("gc_epoch")
