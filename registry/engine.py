"""Database engines and migrations.

SQLite gets WAL (readers never block the writer), a busy timeout, and explicit transaction
control: pysqlite's own implicit BEGIN is switched off so that write transactions start
with BEGIN IMMEDIATE. That takes the write lock up front, so concurrent writer processes
queue on the busy timeout instead of failing halfway with "database is locked" when a read
transaction tries to upgrade. PostgreSQL URLs are routed to psycopg 3, and there every round
trip to the server costs more than a whole lookup in SQLite: pooled connections are checked
without one, a single-statement read runs in autocommit on the driver's connection
(``raw_autocommit``; ``read_one`` for the rarer reads through Core), a publish is one call of a
server-side function in autocommit (``raw_autocommit``, migration 0003), and a batch of them or
the general publish transaction is pipelined (``raw_write_tx``).
"""

from __future__ import annotations

import contextlib
import functools
import select
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError

from .db import VERSION_TABLE
from .errors import StorageUnavailable
from .rawsql import sqlalchemy_integrity

MIGRATIONS = Path(__file__).with_name("migrations")
_WRITE = "registry_write"
# An arbitrary constant: the advisory-lock key that serializes concurrent migrations.
_PG_MIGRATION_LOCK = 0x70656674


def normalize_url(url: str) -> str:
    """Route bare postgresql:// URLs to the psycopg 3 driver that is installed."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def unavailable(engine: Engine, exc: BaseException) -> StorageUnavailable | None:
    """The one-line error for a database that is locked or cannot be reached, else None."""
    orig = getattr(exc, "orig", None) or exc
    if not isinstance(orig, engine.dialect.loaded_dbapi.OperationalError):
        return None
    name = engine.url.render_as_string(hide_password=True)
    first = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    if engine.dialect.name == "sqlite":
        if "locked" in first or "busy" in first:
            wait = getattr(engine, "registry_busy_timeout_ms", 0) / 1000
            return StorageUnavailable(f"database {name} is locked by another writer (waited "
                                      f"{wait:g} s; PEFTOPS_REGISTRY_BUSY_TIMEOUT sets it)")
        return None
    state = getattr(orig, "sqlstate", None)
    if state is None or state.startswith(("08", "57P")):  # connection failures, shutdowns
        return StorageUnavailable(f"database {name} is unavailable: {first}")
    return None


def create_registry_engine(url: str, *, busy_timeout_ms: int = 60_000,
                           connect_timeout_s: int = 10) -> Engine:
    """Create an engine configured for the registry's transaction pattern.

    busy_timeout_ms: how long a SQLite writer waits for another's lock; connect_timeout_s:
    how long PostgreSQL connections may take. Past either, StorageUnavailable names the
    database.
    """
    url = normalize_url(url)
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        engine = create_engine(url, connect_args={"connect_timeout": connect_timeout_s})
        event.listen(engine, "checkout", _drop_if_closed_by_server)
        _typed_errors(engine)
        return engine
    if u.database and u.database != ":memory:":
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000})
    engine.registry_busy_timeout_ms = busy_timeout_ms  # read by unavailable()
    _typed_errors(engine)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable across application crashes in WAL mode and avoids an fsync
        # per commit.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # A 64 MiB page cache (the default is 2 MiB): a page of 100 versions touches ~100
        # random table pages, and at 100k versions the default cache misses on most of them
        # (measured: CPU p95 of a tag-filtered page 1.2 -> 0.8 ms). Memory is only taken as
        # pages are read.
        cur.execute("PRAGMA cache_size=-65536")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection):
        conn.exec_driver_sql(
            "BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")

    return engine


def _drop_if_closed_by_server(dbapi_conn, _record, _proxy) -> None:
    """A pooled PostgreSQL connection is checked before use without a round trip: an idle
    connection has nothing to read, so a readable socket means the server ended it (restart,
    pg_terminate_backend, idle timeout: its FATAL message and EOF are waiting). The pool then
    opens a fresh one. What it buys: pool_pre_ping's SELECT 1 was one of a point lookup's four
    round trips, with BEGIN and COMMIT (``python bench/pg_roundtrips.py``). A server that vanished
    without closing (a cut network) is still found by the statement itself, as a one-line
    StorageUnavailable."""
    if dbapi_conn.closed or dbapi_conn.broken:
        raise DisconnectionError("connection closed")
    poller = select.poll()  # not select(): a busy process's descriptors can pass FD_SETSIZE
    poller.register(dbapi_conn.pgconn.socket, select.POLLIN)
    if poller.poll(0):
        raise DisconnectionError("connection ended by the server")


def _typed_errors(engine: Engine) -> None:
    @event.listens_for(engine, "handle_error")
    def _on_error(ctx):
        err = unavailable(engine, ctx.original_exception)
        if err is not None:
            raise err from None


@contextlib.contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A write transaction: BEGIN IMMEDIATE on SQLite, a plain transaction elsewhere."""
    with engine.connect().execution_options(**{_WRITE: True}) as conn, conn.begin():
        yield conn


@contextlib.contextmanager
def _driver_errors(engine: Engine, sql: str) -> Iterator[None]:
    """Errors of statements run on the DBAPI connection, as the Core path raises them: an
    unreachable or locked database as StorageUnavailable, an IntegrityError as SQLAlchemy's
    (publish's retry loop catches that one)."""
    try:
        with sqlalchemy_integrity(engine.dialect, sql):
            yield
    except engine.dialect.loaded_dbapi.OperationalError as e:
        err = unavailable(engine, e)
        if err is None:
            raise
        raise err from None


@contextlib.contextmanager
def raw_write_tx(engine: Engine) -> Iterator[Any]:
    """write_tx on the pooled DBAPI connection itself, for statements run through
    rawsql.RawTx: no Core Connection, event dispatch or result wrapping around it (the
    publish hot path). Commits on success, rolls back on any exception.

    On PostgreSQL the transaction runs in psycopg's pipeline mode: statements are sent without
    waiting for their answers until one is needed (a fetch), so a publish's lock and task row
    share one wait and its tags, metrics, counters and COMMIT another (answers read from the
    server per publish 9 -> 5, ``python bench/pg_roundtrips.py``). An error then surfaces at the
    next fetch or at the commit, both inside this block."""
    raw = engine.raw_connection()
    dbapi = raw.driver_connection
    try:
        with _driver_errors(engine, "COMMIT"):
            if engine.dialect.name == "sqlite":
                dbapi.execute("BEGIN IMMEDIATE")
            try:
                with _pipelined(dbapi, engine.dialect.name):
                    yield dbapi
                    dbapi.commit()  # pipelined: sent behind the last statements
            except BaseException:
                raw.rollback()
                raise
    finally:
        raw.close()  # back to the pool


@contextlib.contextmanager
def raw_autocommit(engine: Engine) -> Iterator[Any]:
    """PostgreSQL: the pooled DBAPI (psycopg) connection in autocommit, for a statement that
    is its own transaction: a single-statement read, or publish's registry_publish() call,
    whose commit then rides on the same round trip. Run on the driver's connection, not
    through Core: an alias lookup 0.33 -> 0.22 ms p50 on a 10k registry (the same lookup
    through Core's execute and its per-call isolation switch, interleaved in one process;
    BENCHMARKS.md, "reads on the driver"). The connection goes back to the pool in its
    ordinary (transactional) mode."""
    raw = engine.raw_connection()
    dbapi = raw.driver_connection
    try:
        with _driver_errors(engine, "autocommit statement"):
            dbapi.autocommit = True
            try:
                yield dbapi
            finally:
                if not dbapi.closed:
                    dbapi.autocommit = False
    finally:
        raw.close()  # back to the pool


def _pipelined(dbapi_conn, dialect: str):
    if dialect == "postgresql":
        from psycopg import Pipeline  # the driver normalize_url routes PostgreSQL URLs to

        if Pipeline.is_supported():  # libpq >= 14
            return dbapi_conn.pipeline()
    return contextlib.nullcontext()


@contextlib.contextmanager
def read_tx(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction (one consistent snapshot)."""
    with engine.connect() as conn, conn.begin():
        yield conn


@contextlib.contextmanager
def read_one(engine: Engine) -> Iterator[Connection]:
    """A connection for a read that is one statement, which is its own snapshot: on
    PostgreSQL in autocommit, so the read is one round trip instead of BEGIN, the statement and
    COMMIT (with the pre-ping gone, a point lookup reads 4 -> 1 answers from the server,
    ``python bench/pg_roundtrips.py``). Anything read after the first statement (an error
    message's detail) may see later commits."""
    if engine.dialect.name != "postgresql":
        with read_tx(engine) as conn:
            yield conn
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn


def _alembic_config(conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


@functools.lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest migration (read from the scripts once per process: they ship with the code)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision`; safe when several processes open at once."""
    if revision == "head" and current_revision(engine) == head_revision():
        return
    with write_tx(engine) as conn:
        # SQLite: BEGIN IMMEDIATE above already excludes other migrators. PostgreSQL: an
        # advisory lock held until this transaction ends.
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        command.upgrade(_alembic_config(conn), revision)
