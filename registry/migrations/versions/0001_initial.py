"""Initial registry schema: bases, tasks, versions, tags, metrics, aliases, lock.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "registry_bases",
        sa.Column("digest", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("module_shapes", sa.Text(), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name="pk_registry_bases"),
    )
    op.create_table(
        "registry_lock",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_registry_lock"),
    )
    op.execute("INSERT INTO registry_lock (id) VALUES (1)")
    op.create_table(
        "registry_tasks",
        sa.Column("id", Id, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("base_digest", sa.String(200), nullable=False),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.Column("n_versions", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_registry_tasks"),
        sa.UniqueConstraint("name", name="uq_registry_tasks_name"),
        sa.ForeignKeyConstraint(["base_digest"], ["registry_bases.digest"],
                                name="fk_registry_tasks_base_digest_registry_bases"),
    )
    op.create_table(
        "registry_versions",
        sa.Column("id", Id, nullable=False),
        sa.Column("task_id", Id, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.String(64), nullable=False),
        sa.Column("base_digest", sa.String(200), nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("vllm_servable", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("files", sa.Text(), nullable=False),
        sa.Column("lint", sa.Text(), nullable=False),
        sa.Column("lineage", sa.Text(), nullable=False),
        sa.Column("tags", sa.Text(), nullable=False),
        sa.Column("metrics", sa.Text(), nullable=False),
        sa.Column("aliases", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_registry_versions"),
        sa.UniqueConstraint("task_id", "version", name="uq_registry_versions_task_id_version"),
        sa.UniqueConstraint("task_id", "adapter_id",
                            name="uq_registry_versions_task_id_adapter_id"),
        sa.ForeignKeyConstraint(["task_id"], ["registry_tasks.id"], ondelete="CASCADE",
                                name="fk_registry_versions_task_id_registry_tasks"),
        sa.ForeignKeyConstraint(["base_digest"], ["registry_bases.digest"],
                                name="fk_registry_versions_base_digest_registry_bases"),
    )
    for cols in (("method", "id"), ("base_digest", "id"), ("status", "id"),
                 ("created_at", "id")):
        op.create_index(f"ix_registry_versions_{'_'.join(cols)}", "registry_versions",
                        list(cols))
    for table, vtype, vlen in (("registry_version_tags", sa.String, 1024),
                               ("registry_version_metrics", sa.Float, None)):
        op.create_table(
            table,
            sa.Column("version_id", Id, nullable=False),
            sa.Column("key", sa.String(128), nullable=False),
            sa.Column("value", vtype(vlen) if vlen else vtype(), nullable=False),
            sa.PrimaryKeyConstraint("version_id", "key", name=f"pk_{table}"),
            sa.ForeignKeyConstraint(["version_id"], ["registry_versions.id"],
                                    ondelete="CASCADE",
                                    name=f"fk_{table}_version_id_registry_versions"),
        )
        op.create_index(f"ix_{table}_key_value_version_id", table,
                        ["key", "value", "version_id"])
    op.create_table(
        "registry_aliases",
        sa.Column("task_id", Id, nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("version_id", Id, nullable=False),
        sa.PrimaryKeyConstraint("task_id", "alias", name="pk_registry_aliases"),
        sa.ForeignKeyConstraint(["task_id"], ["registry_tasks.id"], ondelete="CASCADE",
                                name="fk_registry_aliases_task_id_registry_tasks"),
        sa.ForeignKeyConstraint(["version_id"], ["registry_versions.id"], ondelete="CASCADE",
                                name="fk_registry_aliases_version_id_registry_versions"),
    )
    op.create_index("ix_registry_aliases_alias_version_id", "registry_aliases",
                    ["alias", "version_id"])
    op.create_index("ix_registry_aliases_version_id", "registry_aliases", ["version_id"])


def downgrade() -> None:
    for table in ("registry_aliases", "registry_version_metrics", "registry_version_tags",
                  "registry_versions", "registry_tasks", "registry_lock", "registry_bases"):
        op.drop_table(table)
