"""Core statements run straight on the DBAPI cursor of an open transaction.

What it buys: publish at ~1.75x the rate of the same statements run through Core
(``python bench/publish_ab.py``). A reader can skip this module: ``Prepared(stmt)`` wraps a
Core statement, and ``RawTx.run(prepared, values)`` executes it like ``conn.execute``.

The publish path runs the same five or six small statements for every version. Executed as
SQLAlchemy Core, each pays ~30 µs of execution-context set-up and result wrapping, more than
SQLite spends running it; this module renders each statement once per dialect (SQLAlchemy
does the rendering, so the SQL still comes from the table definitions in db.py), applies the
column types' bind processors itself, and runs it on the DBAPI connection's own cursor, inside
a transaction opened by ``engine.raw_write_tx`` (publish) or ``engine.write_tx`` (the other
mutations, through ``RawTx.of``). On PostgreSQL the single-statement reads (a version, a
search page, the task list) run the same way on a connection in autocommit
(``engine.raw_autocommit``): psycopg returns the types the columns hold, so its rows are what
Core would return. On SQLite reads stay on Core, whose result processing turns the text SQLite
stores back into datetimes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import ClauseElement

_MISSING = object()


class _Rendered:
    """One statement rendered for one dialect: SQL text plus how to order and convert params."""

    __slots__ = ("sql", "names", "procs", "defaults", "positional")

    def __init__(self, stmt: ClauseElement, dialect: Dialect, column_keys: Sequence[str] | None):
        compiled = stmt.compile(dialect=dialect, column_keys=column_keys)
        self.sql = compiled.string
        self.positional = dialect.positional
        self.names = tuple(compiled.positiontup if self.positional else compiled.binds)
        binds = [compiled.binds[n] for n in self.names]
        self.procs = tuple(b.type.bind_processor(dialect) for b in binds)
        # Literals inside the statement (the 1 of "n_versions + 1") are binds with a value.
        self.defaults = tuple(_MISSING if b.required else b.effective_value for b in binds)

    def params(self, values: Mapping[str, Any]):
        vals = [values[n] if d is _MISSING else values.get(n, d)
                for n, d in zip(self.names, self.defaults)]
        out = [v if p is None else p(v) for p, v in zip(self.procs, vals)]
        return tuple(out) if self.positional else dict(zip(self.names, out))


class Prepared:
    """A Core statement with its renderings, one per dialect (and INSERT column set).

    The cache lives on the statement's own wrapper, so it is as long-lived as the statement
    and keyed by nothing that can be reused. Build these once, at module level.
    """

    __slots__ = ("stmt", "is_insert", "_renderings")

    def __init__(self, stmt: ClauseElement):
        self.stmt = stmt
        self.is_insert = bool(getattr(stmt, "is_insert", False))
        self._renderings: dict[tuple[str, tuple[str, ...] | None], _Rendered] = {}

    def rendered(self, dialect: Dialect, values: Mapping[str, Any]) -> _Rendered:
        # An INSERT is rendered for the columns the caller gives (SQLAlchemy's column_keys);
        # every other statement takes only its bindparams.
        keys = tuple(values) if self.is_insert else None
        key = (dialect.name, keys)
        r = self._renderings.get(key)
        if r is None:
            r = self._renderings[key] = _Rendered(self.stmt, dialect, keys)
        return r


@contextlib.contextmanager
def sqlalchemy_integrity(dialect: Dialect, sql: str, params: Any = None) -> Iterator[None]:
    """The driver's IntegrityError raised inside, re-raised as SQLAlchemy's: publish's retry
    loop catches that one, whether the error came at execute, at a fetch or at the commit (in
    a pipeline, engine.raw_write_tx, a statement's error arrives with its rows or at COMMIT)."""
    try:
        yield
    except dialect.loaded_dbapi.IntegrityError as e:
        raise IntegrityError(sql, params, e) from e


class RawTx:
    """Run Prepared statements on the DBAPI cursor of ``conn``'s open transaction.

    Statements must take only bound parameters: ``bindparam`` values, or for an INSERT the
    columns its values name.
    """

    def __init__(self, dbapi_conn, dialect: Dialect):
        self.dialect = dialect
        self.name = dialect.name
        self._cursor = dbapi_conn.cursor()

    @classmethod
    def of(cls, conn: Connection) -> "RawTx":
        """Statements inside a Core connection's open transaction."""
        return cls(conn.connection.driver_connection, conn.dialect)

    def _bound(self, stmt: Prepared, values: Mapping[str, Any] | None) -> tuple[str, Any]:
        values = values or {}
        r = stmt.rendered(self.dialect, values)
        return r.sql, r.params(values)

    def run(self, stmt: Prepared, values: Mapping[str, Any] | None = None):
        """Execute and return the cursor (fetchone / fetchall on it)."""
        sql, params = self._bound(stmt, values)
        with sqlalchemy_integrity(self.dialect, sql, params):
            self._cursor.execute(sql, params)
        return self._cursor

    def first(self, stmt: Prepared, values: Mapping[str, Any] | None = None):
        """The first row as a tuple, or None. In a pipeline (engine.raw_write_tx) a statement's
        error arrives with its rows, so the fetch is inside the translation too."""
        sql, params = self._bound(stmt, values)
        with sqlalchemy_integrity(self.dialect, sql, params):
            return self._cursor.execute(sql, params).fetchone()

    def all(self, stmt: Prepared, values: Mapping[str, Any] | None = None) -> list[tuple]:
        """Every row, as tuples."""
        sql, params = self._bound(stmt, values)
        with sqlalchemy_integrity(self.dialect, sql, params):
            return self._cursor.execute(sql, params).fetchall()

    def scalar(self, stmt: Prepared, values: Mapping[str, Any] | None = None):
        """The first column of the first row, or None."""
        row = self.first(stmt, values)
        return None if row is None else row[0]

    def many(self, stmt: Prepared, rows: Sequence[Mapping[str, Any]]) -> None:
        """executemany of an INSERT over ``rows`` (dicts with the same keys, by column)."""
        r = stmt.rendered(self.dialect, rows[0])
        params = [r.params(v) for v in rows]
        with sqlalchemy_integrity(self.dialect, r.sql, params):
            self._cursor.executemany(r.sql, params)
