"""The task's name on each version row (task_name), so that reads need no join to tasks.

Every read of versions (a search page, a version, an alias lookup) returns the task's name, and
took it from a join to registry_tasks: one more index probe per row returned (a page of 100:
101 probes of tasks' primary key beside 101 of versions'), and a three-table join for the
planner. A task's name never changes once the task exists (no operation renames one), so a copy
written with the version is never stale. What it buys on PostgreSQL at 100k versions: the join
cost 14-27 % of a search page's time (``python bench/search_ab.py``, BENCHMARKS.md, "The task's
name on the version row"); on SQLite 2-4 %.

The upgrade writes every version row once (one observation: 4.1 s for `Registry.open` to
upgrade a 100k PostgreSQL registry from 0003, the interpreter's start included) inside
the migration's transaction, so a registry with millions of versions is best upgraded at a quiet
moment: publishes wait for it. Filters by task still go through registry_tasks (its unique name
index finds the task id, then the (task_id, version) index the versions in order).
registry_publish() (PostgreSQL, 0003) is replaced by the same function that also writes the
column.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""
import importlib

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Alembic loads revision files by path, not as members of their package: import by full name.
_F0003 = importlib.import_module(
    "registry.migrations.versions.0003_publish_function").PUBLISH_FUNCTION

# 0003's function with task_name in its INSERT: the same text otherwise, so what 0003 says of
# it stays true, and the downgrade restores 0003's text as it was.
_EDITS = (("INSERT INTO registry_versions (task_id, version, ",
           "INSERT INTO registry_versions (task_id, task_name, version, "),
          ("VALUES (v_task, version_number, p_adapter_id, ",
           "VALUES (v_task, p_task, version_number, p_adapter_id, "))


def _function_with_task_name() -> str:
    text = _F0003
    for old, new in _EDITS:
        assert text.count(old) == 1, f"0003's function changed: {old!r}"
        text = text.replace(old, new)
    return text


def upgrade() -> None:
    op.add_column("registry_versions", sa.Column("task_name", sa.String(128), nullable=True))
    op.execute("UPDATE registry_versions SET task_name = (SELECT t.name FROM registry_tasks t "
               "WHERE t.id = registry_versions.task_id)")
    with op.batch_alter_table("registry_versions") as batch:
        batch.alter_column("task_name", existing_type=sa.String(128), nullable=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_function_with_task_name())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_F0003)
    with op.batch_alter_table("registry_versions") as batch:
        batch.drop_column("task_name")
