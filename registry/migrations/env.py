"""Alembic environment of the registry; run programmatically by registry.migrate."""

from alembic import context

from registry.db import VERSION_TABLE, Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - registry.migrate always passes a connection
    raise RuntimeError("run registry migrations through registry.migrate.upgrade()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # Our own version table: MLflow and Prefect keep theirs in the same database.
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
