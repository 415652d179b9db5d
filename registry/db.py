"""SQL schema of the registry (SQLAlchemy 2 declarative; created by the Alembic migrations).

A few narrow tables keyed by (task, version). The shape follows the queries that must be
fast at 100k versions:

* versions of one task     -> unique (task_id, version)
* alias lookup              -> primary key (task_id, alias) on aliases
* filter by method/base/... -> (method, id), (base_digest, id), ... so the newest-first
                               page is an index range scan that stops after `limit` rows
* tag filter                -> version_tags (key, value, version_id)
* metric threshold          -> version_metrics (key, value, version_id): the range and the
                               order by value are one index scan
* task list                 -> tasks.name unique, with denormalised counters

Tags, metrics and aliases are also copied as JSON onto the version row (kept in step in the
same transaction) so that reading a page of versions is a single query.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer,
                        MetaData, String, Text, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Registry tables live beside other tools' tables (MLflow, Prefect) in the same database
# when a user points them all at one PostgreSQL; the prefix keeps them apart.
PREFIX = "registry_"
VERSION_TABLE = "peftops_registry_alembic_version"

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# INTEGER on SQLite so the id is the rowid (required for AUTOINCREMENT-free fast inserts),
# BIGINT elsewhere.
IdType = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class SqlBase(Base):
    __tablename__ = PREFIX + "bases"
    digest: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    module_shapes: Mapped[str] = mapped_column(Text)  # JSON {module: [out, in]}
    config: Mapped[str] = mapped_column(Text)  # JSON of the snapshot's config.json
    created_at: Mapped[datetime] = mapped_column(DateTime)


class SqlTask(Base):
    __tablename__ = PREFIX + "tasks"
    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # The base every version of this task is pinned to (set by its first publish).
    base_digest: Mapped[str] = mapped_column(ForeignKey(SqlBase.digest))
    latest_version: Mapped[int] = mapped_column(Integer, default=0)  # never reused
    n_versions: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class SqlVersion(Base):
    __tablename__ = PREFIX + "versions"
    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey(SqlTask.id, ondelete="CASCADE"))
    # A copy of the task's name (names never change): reads return it without a join
    # to tasks (migration 0004).
    task_name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    adapter_id: Mapped[str] = mapped_column(String(64))
    base_digest: Mapped[str] = mapped_column(ForeignKey(SqlBase.digest))
    method: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="active")
    vllm_servable: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    files: Mapped[str] = mapped_column(Text)  # JSON {name: {"sha256", "size"}}
    lint: Mapped[str] = mapped_column(Text)  # JSON [warning, ...]
    lineage: Mapped[str] = mapped_column(Text)  # JSON
    tags: Mapped[str] = mapped_column(Text)  # JSON copy of version_tags
    metrics: Mapped[str] = mapped_column(Text)  # JSON copy of version_metrics
    aliases: Mapped[str] = mapped_column(Text)  # JSON copy of aliases pointing here
    __table_args__ = (
        UniqueConstraint("task_id", "version"),
        UniqueConstraint("task_id", "adapter_id"),
        Index(None, "method", "id"),
        Index(None, "base_digest", "id"),
        Index(None, "status", "id"),
        Index(None, "created_at", "id"),
    )


class SqlTag(Base):
    __tablename__ = PREFIX + "version_tags"
    version_id: Mapped[int] = mapped_column(
        ForeignKey(SqlVersion.id, ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(1024))
    __table_args__ = (Index(None, "key", "value", "version_id"),)


class SqlMetric(Base):
    __tablename__ = PREFIX + "version_metrics"
    version_id: Mapped[int] = mapped_column(
        ForeignKey(SqlVersion.id, ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    __table_args__ = (Index(None, "key", "value", "version_id"),)


class SqlAlias(Base):
    __tablename__ = PREFIX + "aliases"
    task_id: Mapped[int] = mapped_column(
        ForeignKey(SqlTask.id, ondelete="CASCADE"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey(SqlVersion.id, ondelete="CASCADE"))
    __table_args__ = (Index(None, "alias", "version_id"), Index(None, "version_id"))


class SqlAliasMove(Base):
    """One move of an alias, written in the transaction that moves it: from_version None is
    its creation, to_version None its removal. Version numbers, not ids: the history
    outlives the versions it names."""

    __tablename__ = PREFIX + "alias_history"
    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey(SqlTask.id, ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(64))
    from_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor: Mapped[str | None] = mapped_column(String(200), nullable=True)
    moved_at: Mapped[datetime] = mapped_column(DateTime)
    __table_args__ = (Index(None, "task_id", "alias", "id"),)


class SqlLock(Base):
    """One row that gc locks exclusively and publish locks shared (PostgreSQL), so a gc
    never deletes a blob that a publish has uploaded but not yet committed. gc also counts
    itself in ``gc_epoch`` (PostgreSQL), which lets publish's one-statement path
    (registry_publish, migration 0003) tell whether a gc ran since its blobs were stored."""

    __tablename__ = PREFIX + "lock"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gc_epoch: Mapped[int] = mapped_column(BigInteger, server_default="0")


bases = SqlBase.__table__
tasks = SqlTask.__table__
versions = SqlVersion.__table__
tags = SqlTag.__table__
metrics = SqlMetric.__table__
aliases = SqlAlias.__table__
lock = SqlLock.__table__
alias_history = SqlAliasMove.__table__
