"""Search and listing queries, with keyset pagination.

Each query is ordered by a column that an index already delivers in order, so the first
page is an index range scan that stops after `limit + 1` rows whatever the table size:

* metric threshold -> (key, value, version_id) of version_metrics, best value first
* tag              -> (key, value, version_id) of version_tags, newest first
* alias            -> (alias, version_id) of aliases, newest first
* task             -> (task_id, version), newest first
* otherwise        -> versions.id (or (method, id), (base_digest, id) ...), newest first

A page token records the sort mode and the last row's sort key; the next page starts
strictly after it, so pages never skip or repeat rows when versions are added meanwhile.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import DateTime, Float, Integer, Select, and_, bindparam, select, tuple_

from . import db, names
from .errors import InvalidArgument
from .rawsql import Prepared

METRIC_OPS = (">", ">=", "<", "<=")

VERSION_COLUMNS = (
    db.versions.c.id, db.versions.c.task_name, db.versions.c.version, db.versions.c.adapter_id,
    db.versions.c.base_digest, db.versions.c.method, db.versions.c.status,
    db.versions.c.created_at, db.versions.c.metrics, db.versions.c.tags,
    db.versions.c.aliases, db.versions.c.lineage, db.versions.c.files, db.versions.c.lint,
    db.versions.c.vllm_servable,
)


def versions_select(by_task: bool = False) -> Select:
    """SELECT of every column an AdapterVersion needs (one row per version). The task's name
    is the version row's own copy; by_task joins tasks, for a filter on the name (its unique
    index gives the task id, then (task_id, version) gives the versions in order)."""
    if not by_task:
        return select(*VERSION_COLUMNS)
    return select(*VERSION_COLUMNS).select_from(
        db.versions.join(db.tasks, db.tasks.c.id == db.versions.c.task_id))


def encode_token(mode: str, key: list[Any]) -> str:
    """An opaque token: the sort mode (with a fingerprint of the filters) and the last key."""
    raw = json.dumps({"m": mode, "k": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def filter_fingerprint(params: dict[str, Any]) -> str:
    """Short hash of the filter values, so a token is refused by a different query."""
    items = sorted((k, str(v)) for k, v in params.items() if k != "limit")
    return hashlib.sha1(repr(items).encode()).hexdigest()[:10]


def decode_token(token: str, mode: str) -> list[Any]:
    """The key of the last row of the previous page; InvalidArgument if it does not fit."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        key = data["k"]
        ok = data["m"] == mode and isinstance(key, list)
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise InvalidArgument("page_token is invalid or belongs to a query with other "
                              "filters; repeat the same query to continue paging")
    return key


def to_utc_naive(value: datetime | str | float | int, what: str) -> datetime:
    """Accept a datetime, ISO-8601 text or epoch seconds; return naive UTC for the DB."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=timezone.utc).replace(tzinfo=None)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidArgument(f"{what}={value!r} is not an ISO-8601 date/time") from None
    if not isinstance(value, datetime):
        raise InvalidArgument(f"{what} must be a datetime, ISO text or epoch seconds")
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


# Statements are built once per filter shape and executed with bound parameters: building
# and cache-keying a SELECT costs more than running it against an index. Each is Prepared
# (rawsql.py): PostgreSQL runs it on the driver's connection, SQLite through Core (.stmt).
_SEARCH_CACHE: dict[tuple, tuple[Prepared, str, int]] = {}

_METRIC_CMP = {">": "__gt__", ">=": "__ge__", "<": "__lt__", "<=": "__le__"}

GET_BY_VERSION = Prepared(versions_select(by_task=True).where(
    db.tasks.c.name == bindparam("task"), db.versions.c.version == bindparam("version")))
GET_BY_ALIAS = Prepared(versions_select(by_task=True).join(
    db.aliases, and_(db.aliases.c.version_id == db.versions.c.id,
                     db.aliases.c.task_id == db.tasks.c.id)).where(
    db.tasks.c.name == bindparam("task"), db.aliases.c.alias == bindparam("alias")))
GET_LATEST = Prepared(versions_select(by_task=True).where(
    db.tasks.c.name == bindparam("task"), db.versions.c.status == "active").order_by(
    db.versions.c.version.desc()).limit(1))


def _search_statement(shape: tuple) -> tuple[Prepared, str, int]:
    """The SELECT for one combination of filters (values come as bound parameters)."""
    (task, base, method, status, after, before, metric_op, tag, alias, paged) = shape
    v, t = db.versions, db.tasks
    q = versions_select(by_task=task)
    conds = []
    if task:
        conds.append(t.c.name == bindparam("task"))
    if base:
        conds.append(v.c.base_digest == bindparam("base_digest"))
    if method:
        conds.append(v.c.method == bindparam("method"))
    if status:
        conds.append(v.c.status == bindparam("status"))
    if after:
        conds.append(v.c.created_at >= bindparam("created_after", type_=DateTime))
    if before:
        conds.append(v.c.created_at < bindparam("created_before", type_=DateTime))
    if metric_op:
        m = db.metrics
        q = q.join(m, m.c.version_id == v.c.id)
        conds += [m.c.key == bindparam("mkey"),
                  getattr(m.c.value, _METRIC_CMP[metric_op])(bindparam("mval", type_=Float))]
        # Best first in the direction of the threshold: "> x" lists the highest values,
        # "< x" the lowest; ties are broken by version id in the same direction, so the
        # whole order is one scan of the (key, value, version_id) index.
        desc = metric_op.startswith(">")
        mode, sort = ("metric-desc" if desc else "metric-asc"), (m.c.value, m.c.version_id)
    if tag:
        g = db.tags
        q = q.join(g, g.c.version_id == v.c.id)
        conds += [g.c.key == bindparam("tkey"), g.c.value == bindparam("tval")]
    if alias:
        a = db.aliases
        q = q.join(a, a.c.version_id == v.c.id)
        conds.append(a.c.alias == bindparam("alias"))
    if not metric_op:
        desc = True
        if tag:
            mode, sort = "tag", (db.tags.c.version_id,)
        elif alias:
            mode, sort = "alias", (db.aliases.c.version_id,)
        elif task:
            mode, sort = "task", (v.c.version,)
        else:
            mode, sort = "id", (v.c.id,)
    if paged:
        keys = [bindparam(f"k{i}", type_=c.type) for i, c in enumerate(sort)]
        lhs = tuple_(*sort) if len(sort) > 1 else sort[0]
        rhs = tuple_(*keys) if len(sort) > 1 else keys[0]
        conds.append(lhs < rhs if desc else lhs > rhs)
    if conds:
        q = q.where(and_(*conds))
    q = q.order_by(*[c.desc() if desc else c.asc() for c in sort])
    q = q.limit(bindparam("limit", type_=Integer))
    # The sort key columns ride along so the next token can be built from the last row.
    q = q.add_columns(*[c.label(f"_sort{i}") for i, c in enumerate(sort)])
    return Prepared(q), mode, len(sort)


def build_search(*, task=None, base_digest=None, method=None, alias=None, tag=None,
                 metric=None, created_after=None, created_before=None, status=None,
                 limit=100, page_token=None) -> tuple[Prepared, dict[str, Any], str, int]:
    """Validate the filters; return (statement, parameters, sort mode, sort-key length)."""
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
        raise InvalidArgument(f"limit must be an integer in 1..1000, got {limit!r}")
    p: dict[str, Any] = {"limit": limit + 1}
    if task is not None:
        p["task"] = names.task_name(task)
    if base_digest is not None:
        p["base_digest"] = names.base_digest(base_digest)
    if method is not None:
        p["method"] = names.method_name(method)
    if status is not None:
        if status not in ("active", "deprecated"):
            raise InvalidArgument(f"status must be 'active' or 'deprecated', got {status!r}")
        p["status"] = status
    if created_after is not None:
        p["created_after"] = to_utc_naive(created_after, "created_after")
    if created_before is not None:
        p["created_before"] = to_utc_naive(created_before, "created_before")
    op = None
    if metric is not None:
        try:
            mkey, op, mval = metric
        except (TypeError, ValueError):
            raise InvalidArgument("metric must be (key, op, value), e.g. "
                                  "('accuracy', '>=', 0.9)") from None
        if op not in METRIC_OPS:
            raise InvalidArgument(f"metric operator {op!r} is not one of {METRIC_OPS}")
        p["mkey"] = names.key_name(mkey, "metric key")
        p["mval"] = names.metric_value(mkey, mval)
    if tag is not None:
        try:
            tkey, tval = tag
        except (TypeError, ValueError):
            raise InvalidArgument("tag must be (key, value)") from None
        p["tkey"] = names.key_name(tkey, "tag key")
        p["tval"] = names.text_value(tval, "tag value", 1024)
    if alias is not None:
        p["alias"] = names.alias_name(alias)
    shape = (task is not None, base_digest is not None, method is not None,
             status is not None, created_after is not None, created_before is not None,
             op, tag is not None, alias is not None, page_token is not None)
    built = _SEARCH_CACHE.get(shape)
    if built is None:
        built = _SEARCH_CACHE[shape] = _search_statement(shape)
    q, mode, nkey = built
    mode = f"{mode}:{filter_fingerprint(p)}"
    if page_token is not None:
        key = decode_token(page_token, mode)
        if len(key) != nkey:
            raise InvalidArgument("page_token does not fit this query")
        p.update({f"k{i}": k for i, k in enumerate(key)})
    return q, p, mode, nkey


def sort_key(row, n: int) -> list[Any]:
    """The sort key of a search row: its n columns after the version's (by position, so a
    driver's plain tuple serves as well as a Core row)."""
    return list(row[len(VERSION_COLUMNS):len(VERSION_COLUMNS) + n])
