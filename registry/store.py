"""The adapter registry: SQL metadata plus a content-addressed blob store.

Write order is "blob first, metadata second": publish uploads and verifies every file,
then records the version in one transaction. A crash in between leaves only unreferenced
blobs, which gc removes; there is never a version row without its bytes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from . import db, names
from .adapter import CONFIG_FILE, WEIGHTS_FILE, AdapterFolder, scan_adapter
from .blobs import BlobStore, open_blob_store
from .config import busy_timeout_ms, default_blob_uri, default_db_url
from .engine import (create_registry_engine, raw_autocommit, raw_write_tx, read_one, read_tx,
                     upgrade, write_tx)
from .errors import (BasePinMismatch, Conflict, InvalidAdapter, InvalidArgument, LintError,
                     NotFound, UnknownMetric)
from .jsonlimits import check_text, check_value
from .lint import LintCache, LintReport, lint_adapter
from .query import (GET_BY_ALIAS, GET_BY_VERSION, GET_LATEST, build_search, decode_token,
                    encode_token, sort_key)
from .rawsql import Prepared, RawTx
from .shapes import module_shapes_from_state_dict, read_safetensors_header
from .types import AdapterVersion, AliasMove, BaseModel, ExportedAdapter, Page, TaskInfo

# Canonical JSON for the text columns: sorted keys, so equal values store equal text.
_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
_loads = json.loads
_PUBLISH_RETRIES = 8

# Statements built once and run with bound parameters (see query.py for why). Process-wide
# state: each Prepared one keeps its rendered SQL per dialect for the life of the process.
# The task row and, in the same statement, the version that already holds this content
# (if any): one round trip on the publish path instead of two.
_EXISTING = select(db.versions.c.version).where(
    db.versions.c.task_id == db.tasks.c.id,
    db.versions.c.adapter_id == bindparam("aid")).scalar_subquery()
_TASK_FOR_UPDATE = Prepared(select(
    db.tasks.c.id, db.tasks.c.base_digest, db.tasks.c.latest_version,
    _EXISTING.label("existing")).where(db.tasks.c.name == bindparam("name")).with_for_update())
_INSERT_VERSION = Prepared(insert(db.versions).returning(db.versions.c.id))
_INSERT_TASK = {
    "sqlite": Prepared(sqlite_insert(db.tasks).on_conflict_do_nothing(index_elements=["name"])),
    "postgresql": Prepared(pg_insert(db.tasks).on_conflict_do_nothing(index_elements=["name"]))}
_LOCK_SHARED = Prepared(select(db.lock.c.id).where(db.lock.c.id == 1).with_for_update(read=True))
# gc's exclusive lock is an UPDATE of the lock row that counts the gc: its row lock excludes
# publish's FOR SHARE as FOR UPDATE would, and the count is what registry_publish() compares.
_LOCK_EXCLUSIVE = Prepared(update(db.lock).where(db.lock.c.id == 1).values(
    gc_epoch=db.lock.c.gc_epoch + 1))
_T = db.tasks
_TASK_COLS = (_T.c.id, _T.c.name, _T.c.base_digest, _T.c.latest_version, _T.c.n_versions,
              _T.c.created_at, _T.c.updated_at)
_TASKS_FIRST = select(*_TASK_COLS).order_by(_T.c.name).limit(bindparam("lim"))
_TASKS_AFTER = select(*_TASK_COLS).where(_T.c.name > bindparam("after")).order_by(
    _T.c.name).limit(bindparam("lim"))
# SQLite: the aliases of the tasks on one page, selected by the page's name range (a fixed
# statement, where an IN list of ids would be re-rendered for every page).
_TASK_ALIASES = select(db.aliases.c.task_id, db.aliases.c.alias, db.versions.c.version).join(
    db.versions, db.versions.c.id == db.aliases.c.version_id).join(
    _T, _T.c.id == db.aliases.c.task_id).where(
    _T.c.name >= bindparam("lo"), _T.c.name <= bindparam("hi"))


def _with_aliases(page):
    """PostgreSQL: a page of tasks joined to their aliases, one statement (one round trip), a
    row per (task, alias), planned as one probe of the aliases' primary key per task. There the
    name-range statement above is planned as a scan of every alias of the registry (the page
    at 100k versions, p50/p95: 5.90/7.46 ms before, 3.41/3.95 and 3.78/5.05 ms in two runs
    after; ``bench/registry_bench.py --backend postgresql --skip-mlflow --small-tasks 100
    --publish 100 --publishers 0``). SQLite plans this join as a scan instead (37 ms at 100k
    when tried, same bench with ``--backend both``), so each backend keeps the form it runs
    well."""
    t = page.subquery("page")
    a, v = db.aliases, db.versions
    return select(*t.c, a.c.alias, v.c.version).select_from(
        t.outerjoin(a.join(v, v.c.id == a.c.version_id), a.c.task_id == t.c.id)).order_by(
        t.c.name, a.c.alias)


_TASKS_JOINED = {_TASKS_FIRST: Prepared(_with_aliases(_TASKS_FIRST)),
                 _TASKS_AFTER: Prepared(_with_aliases(_TASKS_AFTER))}
_INSERT_TAG = Prepared(insert(db.tags))
_INSERT_METRIC = Prepared(insert(db.metrics))
_A = db.aliases
_ALIAS_HOLDER = Prepared(select(_A.c.version_id).where(_A.c.task_id == bindparam("tid"),
                                                       _A.c.alias == bindparam("alias")))
_ALIAS_DELETE = Prepared(delete(_A).where(_A.c.task_id == bindparam("tid"),
                                          _A.c.alias == bindparam("alias")))
_ALIAS_INSERT = Prepared(insert(_A))
_H = db.alias_history
_HISTORY_INSERT = Prepared(insert(_H))
_VERSION_NUMBER = Prepared(select(db.versions.c.version).where(
    db.versions.c.id == bindparam("vid")))
_VERSION_ALIASES = Prepared(select(db.versions.c.aliases).where(
    db.versions.c.id == bindparam("vid")))
_SET_VERSION_ALIASES = Prepared(update(db.versions).where(
    db.versions.c.id == bindparam("vid")).values(aliases=bindparam("b_aliases")))
_BUMP_TASK = Prepared(update(db.tasks).where(db.tasks.c.id == bindparam("b_tid")).values(
    latest_version=bindparam("b_version"), n_versions=db.tasks.c.n_versions + 1,
    updated_at=bindparam("b_now")))
# Tags of a version, set inside the publish transaction (re-publishing identical content).
_TAG_DELETE = Prepared(delete(db.tags).where(db.tags.c.version_id == bindparam("vid"),
                                             db.tags.c.key == bindparam("key")))
_VERSION_TAGS = Prepared(select(db.versions.c.tags).where(db.versions.c.id == bindparam("vid")))
_SET_VERSION_TAGS = Prepared(update(db.versions).where(
    db.versions.c.id == bindparam("vid")).values(tags=bindparam("b_tags")))
# Whether any version records a metric (one index seek), and every name recorded (only
# read to explain a search by an unknown name).
_METRIC_RECORDED = select(db.metrics.c.key).where(
    db.metrics.c.key == bindparam("key")).limit(1)
_METRIC_NAMES = select(db.metrics.c.key).distinct().order_by(db.metrics.c.key)
_VERSION_ID = Prepared(select(db.versions.c.id, db.versions.c.status).where(
    db.versions.c.task_id == bindparam("tid"), db.versions.c.version == bindparam("ver")))
# PostgreSQL: one publish as one call (migration 0003 says what the function does and when it
# leaves the publish to Registry._record).
_PUBLISH_CALL = ("SELECT outcome, version_number, epoch FROM registry_publish("
                 + ", ".join(["%s"] * 14) + ")")


@dataclass(frozen=True)
class PublishRequest:
    """One adapter folder to publish (see Registry.publish for the fields)."""

    task: str
    adapter_dir: Path | str
    base_digest: str
    method: str
    metrics: Mapping[str, float] | None = None
    lineage: Mapping[str, Any] | None = None
    tags: Mapping[str, str] | None = None
    aliases: Sequence[str] = ()
    strict_lint: bool = False
    actor: str | None = None  # who sets the aliases (recorded in the alias history)


class _LeftToRecord(Exception):
    """Raised inside a batch of registry_publish() calls to roll it back."""


@dataclass(frozen=True)
class _Prepared:
    """A validated request whose blobs are stored: what the transaction records."""

    task: str
    row: dict[str, Any]
    folder: AdapterFolder
    tags: dict[str, str]
    metrics: dict[str, float]
    aliases: tuple[str, ...]
    lineage: dict[str, Any]
    report: LintReport
    actor: str | None = None


def _actor(actor: str | None) -> str | None:
    """Who moves an alias, as recorded: given text (bounded), else $USER, else None."""
    actor = actor or os.environ.get("USER") or None
    return None if actor is None else names.text_value(actor, "actor", 200)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


_UTC = timezone.utc


def _aware(dt: datetime) -> datetime:
    """A stored time (naive, UTC) as an aware one; an aware one is kept. What the constructor
    buys: ~0.3 µs where ``dt.replace(tzinfo=...)`` takes ~0.7 (its keyword parsing; ``python
    -m timeit`` of both), and a page of 100 versions converts 100 times, of 100 tasks 200."""
    if dt.tzinfo is not None:
        return dt
    return datetime(dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second,
                    dt.microsecond, _UTC)


def _row_to_version(r) -> AdapterVersion:
    # Positional (the order of query.VERSION_COLUMNS): several times faster than attribute
    # access on SQLAlchemy rows, and this runs 100 times per page. JSON stays undecoded
    # until a field is read.
    (_id, task, version, aid, base, method, status, created, metrics, tags, aliases,
     lineage, files, lint, servable) = r[:15]
    return AdapterVersion._from_stored(task, version, aid, base, method, status,
                                       _aware(created), metrics, tags, aliases,
                                       lineage, files, lint, bool(servable))


# Lineage keys the rest of peftops records; others are kept as given.
LINEAGE_KEYS = {
    "mlflow_run_id": str, "mlflow_model_id": str, "data_digest": str, "git_commit": str,
    "base_digest": str, "method": str, "hyperparameters": dict, "library_versions": dict,
    "merge_parity": dict,  # the merge-parity certificate
}


def _check_lineage(lineage: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(lineage, Mapping):
        raise InvalidArgument("lineage must be a mapping")
    for key, kind in LINEAGE_KEYS.items():
        if key in lineage and not isinstance(lineage[key], kind):
            raise InvalidArgument(f"lineage[{key!r}] must be a {kind.__name__}, "
                                  f"got {type(lineage[key]).__name__}")
    for key in lineage:
        names.key_name(key, "lineage key")
    return dict(lineage)


class Registry:
    """Adapter versions for pinned base models.

    Open with `Registry.open(db_url, blob_uri)`; one instance is safe to share between
    threads, and any number of processes may open the same database.
    """

    def __init__(self, engine, blobs: BlobStore):
        self.engine = engine
        self.blobs = blobs
        self._bases: dict[str, BaseModel] = {}  # bases never change once registered
        self._pg = engine.dialect.name == "postgresql"
        # PostgreSQL: the gc epoch registry_publish() last answered (None: not asked yet).
        self._gc_epoch: int | None = None
        self._lint_cache = LintCache()

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def open(cls, db_url: str | None = None, blob_uri: str | None = None, *,
             migrate: bool = True, blob_store: BlobStore | None = None,
             busy_timeout_s: float | None = None) -> "Registry":
        """Open (creating if needed) a registry; runs the schema migrations to head.

        db_url: SQLAlchemy URL, sqlite:///path (default under $PEFTOPS_HOME) or
        postgresql://... . blob_uri: file:///dir or s3://bucket/prefix. busy_timeout_s: how
        long a SQLite writer waits for another's lock before StorageUnavailable (default
        PEFTOPS_REGISTRY_BUSY_TIMEOUT, else 60).
        """
        timeout_ms = busy_timeout_ms() if busy_timeout_s is None else int(busy_timeout_s * 1000)
        engine = create_registry_engine(db_url or default_db_url(), busy_timeout_ms=timeout_ms)
        if migrate:
            upgrade(engine)
        blobs = blob_store or open_blob_store(blob_uri or default_blob_uri())
        return cls(engine, blobs)

    def close(self) -> None:
        """Release database connections."""
        self.engine.dispose()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ bases
    def register_base(self, snapshot_dir: Path, *, digest: str,
                      name: str = "gemma-3-270m") -> BaseModel:
        """Register a base model from a safetensors snapshot directory (idempotent).

        The digest is computed by the caller; the registry stores it with the module shape
        map read from the *.safetensors headers and the snapshot's config.json.
        """
        snapshot_dir = Path(snapshot_dir)
        shapes = module_shapes_from_state_dict(snapshot_dir)
        cfg_path = snapshot_dir / "config.json"
        config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        return self.register_base_shapes(digest=digest, name=name, module_shapes=shapes,
                                         config=config)

    def register_base_shapes(self, *, digest: str, name: str,
                             module_shapes: Mapping[str, Sequence[int]],
                             config: Mapping[str, Any] | None = None) -> BaseModel:
        """Register a base from an already computed module shape map (idempotent)."""
        digest = names.base_digest(digest)
        name = names.text_value(name, "base name", 200)
        shapes = {names.text_value(k, "module name", 512): [int(x) for x in v]
                  for k, v in module_shapes.items()}
        if not shapes:
            raise InvalidArgument(f"base {digest} has no 2-D weights: nothing to lint against")
        with write_tx(self.engine) as conn:
            row = conn.execute(select(db.bases).where(db.bases.c.digest == digest)).first()
            if row is None:
                conn.execute(insert(db.bases).values(
                    digest=digest, name=name, module_shapes=_dumps(shapes),
                    config=_dumps(dict(config or {})), created_at=_utcnow()))
            elif _loads(row.module_shapes) != shapes:
                raise BasePinMismatch(
                    f"base {digest} is already registered with different module shapes; "
                    "the digest must identify the weights, so recompute it")
        return self.get_base(digest)

    def get_base(self, digest: str) -> BaseModel:
        """A registered base by digest."""
        if digest in self._bases:
            return self._bases[digest]
        with read_one(self.engine) as conn:
            row = conn.execute(select(db.bases).where(db.bases.c.digest == digest)).first()
        if row is None:
            raise NotFound(f"base {digest} is not registered; call register_base(snapshot_dir, "
                           "digest=...) first")
        base = BaseModel(digest=row.digest, name=row.name, created_at=_aware(row.created_at),
                         module_shapes=_loads(row.module_shapes), config=_loads(row.config))
        self._bases[digest] = base
        return base

    def list_bases(self) -> list[BaseModel]:
        """All registered bases, oldest first."""
        with read_one(self.engine) as conn:
            digests = conn.execute(
                select(db.bases.c.digest).order_by(db.bases.c.created_at)).scalars().all()
        return [self.get_base(d) for d in digests]

    # ------------------------------------------------------------------ publish
    def lint(self, adapter_dir: Path, *, base_digest: str) -> LintReport:
        """Run the servability lint without publishing."""
        folder = scan_adapter(Path(adapter_dir))
        base = self.get_base(names.base_digest(base_digest))
        return lint_adapter(folder.config, read_safetensors_header(folder.path / WEIGHTS_FILE),
                            base.module_shapes)

    def publish(self, task: str, adapter_dir: Path, *, base_digest: str, method: str,
                metrics: Mapping[str, float] | None = None,
                lineage: Mapping[str, Any] | None = None,
                tags: Mapping[str, str] | None = None, aliases: Iterable[str] = (),
                strict_lint: bool = False, actor: str | None = None) -> AdapterVersion:
        """Publish an adapter folder as the next version of `task`.

        lineage records where the adapter came from; the keys peftops uses are
        mlflow_run_id, mlflow_model_id (the run's logged model), data_digest, git_commit,
        method, hyperparameters, library_versions and merge_parity (the merge-parity
        certificate), see LINEAGE_KEYS.

        Blobs are uploaded and verified first, then the version is recorded in one
        transaction. Identical content (same adapter id) already in the task returns the
        existing version, its metrics and lineage unchanged; the tags and aliases given are
        set on it in the same transaction. Refused with BasePinMismatch if the task or the
        lineage names another base, and with LintError if the adapter does not fit the
        base (or, with strict_lint, if vLLM would not serve it).
        """
        return self.publish_or_get(task, adapter_dir, base_digest=base_digest, method=method,
                                   metrics=metrics, lineage=lineage, tags=tags,
                                   aliases=aliases, strict_lint=strict_lint, actor=actor)[0]

    def publish_or_get(self, task, adapter_dir, *, base_digest, method, metrics=None,
                       lineage=None, tags=None, aliases=(), strict_lint=False,
                       actor=None) -> tuple[AdapterVersion, bool]:
        """Like publish; also says whether a new version was created (False: the same
        content was already published and that version is returned)."""
        return self.publish_many([PublishRequest(
            task, adapter_dir, base_digest=base_digest, method=method, metrics=metrics,
            lineage=lineage, tags=tags, aliases=tuple(aliases), strict_lint=strict_lint,
            actor=actor)])[0]

    def publish_many(self, requests: Iterable[PublishRequest]
                     ) -> list[tuple[AdapterVersion, bool]]:
        """Publish several adapter folders in one metadata transaction: all or none.

        Every request is validated, scanned, linted and its blobs uploaded and verified
        before anything is recorded; a bad request raises (its folder named in the error)
        and no version of the batch is recorded. Returns (version, created) per request,
        in order. One transaction for many versions is what makes bulk imports (a fleet
        retrain, a migration from another registry) cheap: the commit and statement
        set-up are paid once per batch, not once per adapter.
        """
        epoch = self._gc_epoch  # read before this call stores any blob: see _publish_calls
        prepared = [self._prepare(r) for r in requests]
        if not prepared:
            return []
        for attempt in range(_PUBLISH_RETRIES):
            try:
                done = self._publish_calls(prepared, epoch) if self._pg else None
                if done is None:
                    with raw_write_tx(self.engine) as dbapi_conn:
                        tx = RawTx(dbapi_conn, self.engine.dialect)
                        done = [self._record(tx, p) for p in prepared]
                break
            except SqlIntegrityError:
                # A concurrent writer took the version number (PostgreSQL, first version
                # of a new task); the unique constraint caught it, so try again.
                if attempt == _PUBLISH_RETRIES - 1:
                    raise
        out = []
        for p, (version, is_new) in zip(prepared, done):
            if not is_new:
                out.append((self.get(p.task, version), False))
                continue
            # Built from what was just written: saves a read on the hot path.
            out.append((AdapterVersion(
                p.task, version, p.folder.adapter_id, p.row["base_digest"], p.row["method"],
                "active", _aware(p.row["created_at"]), p.metrics, p.tags, p.aliases,
                p.lineage, p.folder.files, tuple(p.report.recorded()),
                p.report.vllm_servable), True))
        return out

    def _prepare(self, r: PublishRequest) -> _Prepared:
        """Validate one request, scan and lint its folder, upload its blobs (blobs first)."""
        task = names.task_name(r.task)
        base_digest = names.base_digest(r.base_digest)
        method = names.method_name(r.method)
        metrics = {names.key_name(k, "metric key"): names.metric_value(k, v)
                   for k, v in (r.metrics or {}).items()}
        tags = {names.key_name(k, "tag key"): names.text_value(v, "tag value", 1024)
                for k, v in (r.tags or {}).items()}
        aliases = tuple(sorted({names.alias_name(a) for a in r.aliases}))
        lineage = _check_lineage(r.lineage or {})
        check_value(lineage, "lineage")
        try:
            lineage_json = check_text(_dumps(lineage), "lineage")
        except (TypeError, ValueError) as e:
            raise InvalidArgument(f"lineage must be JSON-serialisable: {e}") from e
        tags_json = check_text(_dumps(tags), "tags")
        metrics_json = check_text(_dumps(metrics), "metrics")
        claimed = lineage.get("base_digest")
        if claimed is not None and claimed != base_digest:
            raise BasePinMismatch(f"lineage says the adapter was trained on base {claimed}, "
                                  f"but it is being published against {base_digest}")

        folder = scan_adapter(Path(r.adapter_dir))
        base = self.get_base(base_digest)
        # The path joined as a str: it only names the file in messages (the bytes were kept
        # by the scan), and pathlib's joins are a visible share of a small publish.
        report = self._lint_cache.lint(
            os.path.join(folder.path, WEIGHTS_FILE), folder.data.get(WEIGHTS_FILE),
            folder.data.get(CONFIG_FILE), folder.config, base_digest, base.module_shapes)
        if report.errors:
            raise LintError(f"adapter {folder.path} does not fit base {base_digest}",
                            report.errors)
        if r.strict_lint and report.warnings:
            raise LintError(f"adapter {folder.path} would not be served by vLLM "
                            "(strict lint)", report.warnings)

        for fname, entry in folder.files.items():  # blobs first
            self.blobs.put(folder.path / fname, entry["sha256"], folder.data.get(fname))

        row = dict(adapter_id=folder.adapter_id, base_digest=base_digest, method=method,
                   status="active", vllm_servable=report.vllm_servable, created_at=_utcnow(),
                   files=_dumps(folder.files), lint=_dumps(report.recorded()),
                   lineage=lineage_json, tags=tags_json, metrics=metrics_json,
                   aliases=_dumps([]))
        return _Prepared(task, row, folder, tags, metrics, aliases, lineage, report,
                         _actor(r.actor))

    def _publish_calls(self, prepared: list[_Prepared],
                       epoch: int | None) -> list[tuple[int, bool]] | None:
        """PostgreSQL: record each version with one call of registry_publish() (migration
        0003); return [(version, created)] in order, or None where the function left a
        publish to _record, and then nothing of this batch is written.

        One version: the call runs in autocommit, so its statements and its commit are one
        round trip. A batch: the calls in one transaction, sent together (pipeline mode), and
        rolled back if any answers 'general'.

        epoch is the gc epoch this process last saw, read before these blobs were stored: the
        function records a version only if no gc has run since (then every blob stored here
        is still there); otherwise _record's transaction checks each blob under the lock, as
        it always has. The function answers the current epoch, kept for the next publish.
        """
        calls = [(p.task, epoch, p.row["adapter_id"], p.row["base_digest"], p.row["method"],
                  p.row["vllm_servable"], p.row["created_at"], p.row["files"], p.row["lint"],
                  p.row["lineage"], p.row["tags"], p.row["metrics"], _dumps(p.aliases),
                  p.actor) for p in prepared]
        if len(calls) == 1:
            with raw_autocommit(self.engine) as conn:
                answers = [conn.execute(_PUBLISH_CALL, calls[0]).fetchone()]
        else:
            try:
                with raw_write_tx(self.engine) as conn:
                    sent = [conn.execute(_PUBLISH_CALL, args) for args in calls]
                    answers = [cur.fetchone() for cur in sent]
                    if any(outcome == "general" for outcome, _, _ in answers):
                        raise _LeftToRecord  # rolls the batch back
            except _LeftToRecord:
                pass
        self._gc_epoch = answers[-1][2]
        if any(outcome == "general" for outcome, _, _ in answers):
            return None
        return [(version, outcome == "created") for outcome, version, _ in answers]

    def _lock(self, tx: RawTx, exclusive: bool) -> None:
        # SQLite writers are already serialized by BEGIN IMMEDIATE.
        if tx.name == "postgresql":
            tx.run(_LOCK_EXCLUSIVE if exclusive else _LOCK_SHARED)

    def _record(self, tx: RawTx, p: _Prepared) -> tuple[int, bool]:
        """Insert one version inside an open write transaction; return (version, created).

        Runs on the transaction's DBAPI cursor (see rawsql.py): this is the publish hot path.
        """
        task, row, folder, tags, metrics = p.task, p.row, p.folder, p.tags, p.metrics
        self._lock(tx, exclusive=False)
        now = row["created_at"]
        key = {"name": task, "aid": row["adapter_id"]}
        t = tx.first(_TASK_FOR_UPDATE, key)
        if t is None:
            tx.run(_INSERT_TASK[tx.name],
                   {"name": task, "base_digest": row["base_digest"], "latest_version": 0,
                    "n_versions": 0, "created_at": now, "updated_at": now})
            t = tx.first(_TASK_FOR_UPDATE, key)
            assert t is not None, "the task row was inserted or already there"
        task_id, pinned, latest, existing = t
        if pinned != row["base_digest"]:
            raise BasePinMismatch(
                f"task {task!r} is pinned to base {pinned}; this adapter targets "
                f"{row['base_digest']}. Publish it under a task for that base")
        if existing is not None:
            self._update_existing(tx, task_id, existing, p)
            return existing, False
        # gc may have removed a blob between upload and this transaction (it holds the
        # exclusive lock while deleting); put it back now, under our shared lock.
        for fname, entry in folder.files.items():
            if not self.blobs.exists(entry["sha256"]):
                self.blobs.put(folder.path / fname, entry["sha256"], folder.data.get(fname))
        version = latest + 1
        vid = tx.scalar(_INSERT_VERSION, dict(row, task_id=task_id, task_name=task,
                                                 version=version))
        if tags:
            tx.many(_INSERT_TAG, [{"version_id": vid, "key": k, "value": v}
                                  for k, v in tags.items()])
        if metrics:
            tx.many(_INSERT_METRIC, [{"version_id": vid, "key": k, "value": v}
                                     for k, v in metrics.items()])
        tx.run(_BUMP_TASK, {"b_tid": task_id, "b_version": version, "b_now": now})
        for a in p.aliases:
            self._move_alias(tx, task_id, a, vid, p.actor, version)
        return version, True

    def _update_existing(self, tx: RawTx, task_id: int, version: int, p: _Prepared) -> None:
        """Identical content re-published: set the request's tags and aliases on the version
        that holds it, in the publish transaction (its metrics and lineage stay as first
        recorded)."""
        if not p.tags and not p.aliases:
            return
        vid, status = tx.first(_VERSION_ID, {"tid": task_id, "ver": version})
        if p.tags:
            for k, v in p.tags.items():
                tx.run(_TAG_DELETE, {"vid": vid, "key": k})
            tx.many(_INSERT_TAG, [{"version_id": vid, "key": k, "value": v}
                                  for k, v in p.tags.items()])
            cur = _loads(tx.scalar(_VERSION_TAGS, {"vid": vid}))
            cur.update(p.tags)
            tx.run(_SET_VERSION_TAGS, {"vid": vid, "b_tags": _dumps(cur)})
        if p.aliases and status != "active":
            raise Conflict(f"{p.task} v{version} already holds this content and is {status}; "
                           f"reactivate it before pointing {list(p.aliases)} at it")
        for a in p.aliases:
            self._move_alias(tx, task_id, a, vid, p.actor, version)

    # ------------------------------------------------------------------ reads
    def get(self, task: str, version: int | None = None,
            alias: str | None = None) -> AdapterVersion:
        """One version: by number, by alias, or (neither given) the latest active one."""
        params: dict[str, Any] = {"task": names.task_name(task)}
        if version is not None and alias is not None:
            raise InvalidArgument("give a version or an alias, not both")
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, int):
                raise InvalidArgument(f"version must be an integer, got {version!r}")
            q, params["version"] = GET_BY_VERSION, version
        elif alias is not None:
            q, params["alias"] = GET_BY_ALIAS, names.alias_name(alias)
        else:
            q = GET_LATEST
        rows = self._rows(q, params)
        if not rows:
            with read_one(self.engine) as conn:
                self._raise_missing(conn, task, version, alias)
        return _row_to_version(rows[0])

    def _rows(self, stmt: Prepared, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        """The rows of a read that is one statement: on PostgreSQL on the driver's connection
        in autocommit (engine.raw_autocommit says what that buys), on SQLite through Core."""
        if self._pg:
            with raw_autocommit(self.engine) as conn:
                return RawTx(conn, self.engine.dialect).all(stmt, params)
        with read_one(self.engine) as conn:
            return conn.execute(stmt.stmt, params).all()

    def _raise_missing(self, conn, task, version, alias):
        t = conn.execute(select(db.tasks.c.latest_version).where(
            db.tasks.c.name == task)).first()
        if t is None:
            raise NotFound(f"task {task!r} does not exist")
        if version is not None:
            raise NotFound(f"task {task!r} has no version {version} "
                           f"(latest number issued: {t.latest_version})")
        if alias is not None:
            raise NotFound(f"task {task!r} has no alias {alias!r}")
        raise NotFound(f"task {task!r} has no active version")

    def versions(self, task: str, limit: int = 100,
                 page_token: str | None = None) -> Page:
        """Versions of one task, newest first."""
        return self.search(task=task, limit=limit, page_token=page_token)

    def search(self, task: str | None = None, base_digest: str | None = None,
               method: str | None = None, alias: str | None = None,
               tag: tuple[str, str] | None = None,
               metric: tuple[str, str, float] | None = None,
               created_after: datetime | str | float | None = None,
               created_before: datetime | str | float | None = None,
               status: str | None = None, limit: int = 100,
               page_token: str | None = None) -> Page:
        """Versions matching every given filter, one page at a time.

        metric=(key, op, value) with op in >, >=, <, <= orders by that metric, best first
        in the direction of the operator; otherwise newest first. A metric name that no
        version records is refused (UnknownMetric, listing the recorded names: the
        pipeline records dev_accuracy, not accuracy). created_* take a
        datetime, ISO-8601 text or epoch seconds (after is inclusive, before exclusive).
        """
        q, params, mode, nkey = build_search(
            task=task, base_digest=base_digest, method=method, alias=alias, tag=tag,
            metric=metric, created_after=created_after, created_before=created_before,
            status=status, limit=limit, page_token=page_token)
        # One statement. A metric that matched no row may be one no version records: only then
        # is that checked (a page with rows proves the name), so the common case stays one
        # round trip on PostgreSQL.
        rows = self._rows(q, params)
        if not rows and metric is not None:
            with read_one(self.engine) as conn:
                if conn.execute(_METRIC_RECORDED, {"key": params["mkey"]}).first() is None:
                    raise UnknownMetric(params["mkey"], self._metric_names(conn))
        token = None
        if len(rows) > limit:
            rows = rows[:limit]
            token = encode_token(mode, sort_key(rows[-1], nkey))
        return Page([_row_to_version(r) for r in rows], token)

    @staticmethod
    def _metric_names(conn) -> list[str]:
        return list(conn.execute(_METRIC_NAMES).scalars())

    def metric_names(self) -> list[str]:
        """Every metric name some version records, sorted (what a metric search accepts)."""
        with read_one(self.engine) as conn:
            return self._metric_names(conn)

    def list_tasks(self, limit: int = 100, page_token: str | None = None) -> Page:
        """Tasks in name order, with counters and current aliases."""
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
            raise InvalidArgument(f"limit must be an integer in 1..1000, got {limit!r}")
        params: dict[str, Any] = {"lim": limit + 1}
        q = _TASKS_FIRST
        if page_token is not None:
            q, params["after"] = _TASKS_AFTER, decode_token(page_token, "tasks")[0]
        if self._pg:
            joined = self._rows(_TASKS_JOINED[q], params)
            rows = list({r[0]: r[:7] for r in joined}.values())  # the task rows, in name order
            pairs = [(r[0], r[7], r[8]) for r in joined if r[7] is not None]
        else:
            with read_tx(self.engine) as conn:
                rows = conn.execute(q, params).all()
                pairs = (conn.execute(_TASK_ALIASES, {"lo": rows[0][1], "hi": rows[-1][1]}).all()
                         if rows else [])
        token = None
        if len(rows) > limit:
            rows = rows[:limit]
            token = encode_token("tasks", [rows[-1][1]])
        alias_map: dict[int, dict[str, int]] = {r[0]: {} for r in rows}
        for tid, alias, ver in pairs:
            if tid in alias_map:  # not the task past the page's end
                alias_map[tid][alias] = ver
        return Page([TaskInfo(name=name, base_digest=base, n_versions=n, latest_version=latest,
                              aliases=alias_map[tid], created_at=_aware(created),
                              updated_at=_aware(updated))
                     for tid, name, base, latest, n, created, updated in rows], token)

    def get_task(self, task: str) -> TaskInfo:
        """One task with its counters and current aliases."""
        name = names.task_name(task)
        with read_tx(self.engine) as conn:
            row = conn.execute(select(*_TASK_COLS).where(_T.c.name == name)).first()
            if row is None:
                raise NotFound(f"task {task!r} does not exist")
            tid, name, base, latest, n, created, updated = row
            aliases = dict(conn.execute(
                select(db.aliases.c.alias, db.versions.c.version).join(
                    db.versions, db.versions.c.id == db.aliases.c.version_id).where(
                    db.aliases.c.task_id == tid)).all())
        return TaskInfo(name=name, base_digest=base, n_versions=n, latest_version=latest,
                        aliases=aliases, created_at=_aware(created),
                        updated_at=_aware(updated))

    def optimize(self) -> None:
        """Refresh the query planner's statistics (run after bulk loads or large deletes).

        On SQLite it also folds the write-ahead log into the database file: after a bulk
        load the log holds every page written, and otherwise the next ordinary publish
        pays for copying it back (an automatic checkpoint) inside its commit.
        """
        with write_tx(self.engine) as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("ANALYZE")
            else:
                for table in db.Base.metadata.sorted_tables:
                    conn.exec_driver_sql(f"ANALYZE {table.name}")
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn:  # outside any transaction, as it must be
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def count_versions(self) -> int:
        """Number of versions stored (all tasks)."""
        with read_one(self.engine) as conn:
            return conn.execute(select(func.count()).select_from(db.versions)).scalar_one()

    # ------------------------------------------------------------------ mutations
    def _version_row(self, conn, task: str, version: int):
        row = conn.execute(
            select(db.versions.c.id, db.versions.c.task_id, db.versions.c.status,
                   db.versions.c.aliases)
            .join(db.tasks, db.tasks.c.id == db.versions.c.task_id)
            .where(db.tasks.c.name == names.task_name(task),
                   db.versions.c.version == version)).first()
        if row is None:
            self._raise_missing(conn, task, version, None)
        return row

    def _move_alias(self, tx: RawTx, task_id: int, alias: str, version_id: int | None,
                    actor: str | None = None, to_version: int | None = None) -> None:
        """Point alias at version_id (None removes it), keeping the JSON copies in step and
        recording the move in the alias history (same transaction)."""
        key = {"tid": task_id, "alias": alias}
        old = tx.scalar(_ALIAS_HOLDER, key)
        if old == version_id:
            return
        if old is not None:
            tx.run(_ALIAS_DELETE, key)
            self._edit_alias_json(tx, old, alias, add=False)
        if version_id is not None:
            tx.run(_ALIAS_INSERT, {"task_id": task_id, "alias": alias, "version_id": version_id})
            self._edit_alias_json(tx, version_id, alias, add=True)
            if to_version is None:
                to_version = tx.scalar(_VERSION_NUMBER, {"vid": version_id})
        tx.run(_HISTORY_INSERT, {
            "task_id": task_id, "alias": alias, "to_version": to_version, "actor": actor,
            "from_version": None if old is None else tx.scalar(_VERSION_NUMBER, {"vid": old}),
            "moved_at": _utcnow()})

    @staticmethod
    def _edit_alias_json(tx: RawTx, version_id: int, alias: str, add: bool) -> None:
        cur = set(_loads(tx.scalar(_VERSION_ALIASES, {"vid": version_id})))
        cur = cur | {alias} if add else cur - {alias}
        tx.run(_SET_VERSION_ALIASES, {"vid": version_id, "b_aliases": _dumps(sorted(cur))})

    def set_alias(self, task: str, alias: str, version: int, *,
                  actor: str | None = None) -> AdapterVersion:
        """Point `alias` (e.g. production) at a version, moving it if it points elsewhere.
        actor (who moves it) is recorded in the alias history."""
        alias = names.alias_name(alias)
        actor = _actor(actor)
        with write_tx(self.engine) as conn:
            row = self._version_row(conn, task, version)
            if row.status != "active":
                raise Conflict(f"{task} v{version} is {row.status}; reactivate it before "
                               f"pointing {alias!r} at it")
            self._move_alias(RawTx.of(conn), row.task_id, alias, row.id, actor, version)
        return self.get(task, version)

    promote = set_alias

    def delete_alias(self, task: str, alias: str, *, actor: str | None = None) -> None:
        """Remove an alias from a task (recorded in the alias history, by actor)."""
        alias = names.alias_name(alias)
        actor = _actor(actor)
        with write_tx(self.engine) as conn:
            tid = conn.execute(select(db.tasks.c.id).where(
                db.tasks.c.name == names.task_name(task))).scalar()
            if tid is None:
                raise NotFound(f"task {task!r} does not exist")
            held = conn.execute(select(db.aliases.c.version_id).where(
                db.aliases.c.task_id == tid, db.aliases.c.alias == alias)).scalar()
            if held is None:
                raise NotFound(f"task {task!r} has no alias {alias!r}")
            self._move_alias(RawTx.of(conn), tid, alias, None, actor)

    def alias_history(self, task: str, alias: str | None = None,
                      limit: int = 100) -> list[AliasMove]:
        """The moves of a task's aliases (or of one alias), newest first."""
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
            raise InvalidArgument(f"limit must be an integer in 1..1000, got {limit!r}")
        task = names.task_name(task)
        q = select(_H.c.alias, _H.c.from_version, _H.c.to_version, _H.c.actor,
                   _H.c.moved_at).join(_T, _T.c.id == _H.c.task_id).where(_T.c.name == task)
        if alias is not None:
            q = q.where(_H.c.alias == names.alias_name(alias))
        with read_one(self.engine) as conn:
            rows = conn.execute(q.order_by(_H.c.id.desc()).limit(limit)).all()
        return [AliasMove(task, a, f, t, who, _aware(at))
                for a, f, t, who, at in rows]

    def set_tag(self, task: str, version: int, key: str, value: str) -> None:
        """Set (or overwrite) a tag on a version."""
        self._edit_tag(task, version, names.key_name(key, "tag key"),
                       names.text_value(value, "tag value", 1024))

    def delete_tag(self, task: str, version: int, key: str) -> None:
        """Remove a tag from a version (missing tags are ignored)."""
        self._edit_tag(task, version, names.key_name(key, "tag key"), None)

    def _edit_tag(self, task, version, key, value) -> None:
        g, v = db.tags, db.versions
        with write_tx(self.engine) as conn:
            row = self._version_row(conn, task, version)
            conn.execute(delete(g).where(g.c.version_id == row.id, g.c.key == key))
            if value is not None:
                conn.execute(insert(g).values(version_id=row.id, key=key, value=value))
            cur = _loads(conn.execute(select(v.c.tags).where(v.c.id == row.id)).scalar_one())
            if value is None:
                cur.pop(key, None)
            else:
                cur[key] = value
            conn.execute(update(v).where(v.c.id == row.id).values(tags=_dumps(cur)))

    def deprecate(self, task: str, version: int) -> None:
        """Mark a version deprecated: still fetchable by number, skipped as 'latest'."""
        self._set_status(task, version, "deprecated")

    def reactivate(self, task: str, version: int) -> None:
        """Undo deprecate."""
        self._set_status(task, version, "active")

    def _set_status(self, task, version, status) -> None:
        with write_tx(self.engine) as conn:
            row = self._version_row(conn, task, version)
            if status == "deprecated" and _loads(row.aliases):
                raise Conflict(f"{task} v{version} holds alias(es) {_loads(row.aliases)}; "
                               "move them before deprecating it")
            conn.execute(update(db.versions).where(db.versions.c.id == row.id)
                         .values(status=status))

    def delete(self, task: str, version: int, *, force: bool = False,
               actor: str | None = None) -> None:
        """Delete a version's metadata; its blobs go at the next gc if nothing else uses
        them. Refused while it holds an alias unless force=True (which drops the alias)."""
        actor = _actor(actor)
        with write_tx(self.engine) as conn:
            row = self._version_row(conn, task, version)
            held = _loads(row.aliases)
            if held and not force:
                raise Conflict(f"{task} v{version} holds alias(es) {held}; move them first "
                               "or delete with force=True")
            for a in held:
                conn.execute(insert(db.alias_history).values(
                    task_id=row.task_id, alias=a, from_version=version, to_version=None,
                    actor=actor, moved_at=_utcnow()))
            # Children first: do not rely on ON DELETE CASCADE being enabled on every
            # connection (SQLite only honours it per connection).
            for child in (db.aliases, db.tags, db.metrics):
                conn.execute(delete(child).where(child.c.version_id == row.id))
            conn.execute(delete(db.versions).where(db.versions.c.id == row.id))
            conn.execute(update(db.tasks).where(db.tasks.c.id == row.task_id).values(
                n_versions=db.tasks.c.n_versions - 1, updated_at=_utcnow()))

    def gc(self, *, temp_grace_s: float = 3600.0) -> int:
        """Delete blobs no version references, and temporary files older than
        ``temp_grace_s`` (left by writers that were killed); return how many were removed.

        Holds the registry's exclusive write lock meanwhile, so a concurrent publish
        either committed before (its blobs are referenced) or re-uploads after: on
        PostgreSQL the lock counts the gc (gc_epoch), and a publish whose blobs were stored
        before that count moved goes through the transaction that checks them again.
        """
        removed = 0
        with write_tx(self.engine) as conn:
            self._lock(RawTx.of(conn), exclusive=True)
            referenced = self._referenced(conn)
            for digest, _mtime in list(self.blobs.list()):
                if digest not in referenced:
                    self.blobs.delete(digest)
                    removed += 1
        cutoff = time.time() - temp_grace_s
        for name, mtime in list(self.blobs.list_temp()):
            if mtime <= cutoff:
                self.blobs.delete_temp(name)
                removed += 1
        return removed

    @staticmethod
    def _referenced(conn) -> dict[str, list[str]]:
        """sha256 -> the versions ('task-vN') whose files use it."""
        out: dict[str, list[str]] = {}
        q = select(db.tasks.c.name, db.versions.c.version, db.versions.c.files).join(
            db.tasks, db.tasks.c.id == db.versions.c.task_id)
        for task, version, files in conn.execute(q):
            for entry in _loads(files).values():
                out.setdefault(entry["sha256"], []).append(f"{task}-v{version}")
        return out

    def verify(self, *, check_bytes: bool = True) -> dict[str, list[str]]:
        """Check the registry against its blob store; every list empty means all is well.

        missing: blobs a version references that are not stored; corrupt: stored blobs
        whose bytes do not hash to their address (with check_bytes, which reads every
        byte); unreferenced: blobs no version uses (gc removes them); temp: leftover
        temporary files (gc removes them after its grace period).
        """
        with read_tx(self.engine) as conn:
            referenced = self._referenced(conn)
        stored = {d for d, _ in self.blobs.list()}
        report: dict[str, list[str]] = {"missing": [], "corrupt": [], "unreferenced": [],
                                        "temp": sorted(n for n, _ in self.blobs.list_temp())}
        for digest, users in sorted(referenced.items()):
            if digest not in stored:
                report["missing"].append(f"{digest} (used by {', '.join(users)})")
            elif check_bytes and not self.blobs.intact(digest):
                report["corrupt"].append(f"{digest} (used by {', '.join(users)})")
        report["unreferenced"] = sorted(stored - referenced.keys())
        return report

    # ------------------------------------------------------------------ fetch / export
    def fetch(self, task: str, version: int | None = None, alias: str | None = None, *,
              dest: Path, base_digest: str | None = None) -> Path:
        """Write a version's PEFT folder into `dest`, verifying every file's sha256.

        With base_digest, refuse (BasePinMismatch) an adapter trained on another base.
        A corrupt blob raises CorruptBlob and leaves no partial file behind.
        """
        v = self.get(task, version, alias)
        return self._fetch_version(v, Path(dest), base_digest)

    def _fetch_version(self, v: AdapterVersion, dest: Path, base_digest: str | None) -> Path:
        if base_digest is not None and v.base_digest != base_digest:
            raise BasePinMismatch(
                f"{v.name} was trained on base {v.base_digest}, not on {base_digest}; "
                "loading it there would silently compute something else")
        # Every file lands in a hidden sibling folder first and moves into dest only once
        # all of them verified: a failed fetch leaves nothing at dest.
        dest.parent.mkdir(parents=True, exist_ok=True)
        stage = dest.parent / f".{dest.name}.fetch-{os.getpid()}-{secrets.token_hex(4)}"
        stage.mkdir()
        created = not dest.exists()
        try:
            for fname, entry in v.files.items():
                self.blobs.get(entry["sha256"], stage / names.file_name(fname))
            dest.mkdir(exist_ok=True)
            for f in stage.iterdir():
                os.replace(f, dest / f.name)
        except BaseException:
            if created and dest.is_dir() and not any(dest.iterdir()):
                dest.rmdir()
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return dest

    def export(self, items: Iterable[Any], out_dir: Path, *,
               base_digest: str | None = None) -> list[ExportedAdapter]:
        """Write chosen versions as out_dir/<task>-v<version>/ PEFT folders.

        items: (task, version) pairs, AdapterVersion objects or a search Page. Also writes
        out_dir/lora_modules.txt with one vLLM `--lora-modules name=path` entry a line.
        """
        out_dir = Path(out_dir)
        chosen: list[AdapterVersion] = []
        for it in (items.items if isinstance(items, Page) else items):
            if isinstance(it, AdapterVersion):
                chosen.append(it)
            else:
                try:
                    task, version = it
                except (TypeError, ValueError):
                    raise InvalidArgument(f"export items are (task, version) pairs or "
                                          f"AdapterVersion objects, got {it!r}") from None
                chosen.append(self.get(task, version))
        exported = []
        for v in chosen:
            path = self._fetch_version(v, out_dir / v.name, base_digest).resolve()
            if not (path / CONFIG_FILE).is_file():  # pragma: no cover - publish requires it
                raise InvalidAdapter(f"{v.name} has no {CONFIG_FILE}")
            exported.append(ExportedAdapter(v.name, path, v.task, v.version, v.vllm_servable))
        (out_dir / "lora_modules.txt").write_text("".join(e.lora_module + "\n"
                                                          for e in exported))
        return exported
