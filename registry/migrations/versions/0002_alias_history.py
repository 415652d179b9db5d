"""Alias history: every move of an alias (who, when, from which version to which).

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "registry_alias_history",
        sa.Column("id", Id, nullable=False),
        sa.Column("task_id", Id, nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(200), nullable=True),
        sa.Column("moved_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_registry_alias_history"),
        sa.ForeignKeyConstraint(["task_id"], ["registry_tasks.id"], ondelete="CASCADE",
                                name="fk_registry_alias_history_task_id_registry_tasks"),
    )
    op.create_index("ix_registry_alias_history_task_id_alias_id", "registry_alias_history",
                    ["task_id", "alias", "id"])


def downgrade() -> None:
    op.drop_table("registry_alias_history")
