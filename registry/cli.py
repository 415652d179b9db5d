"""`peftops registry ...`: the registry on the command line (rich tables, or --json).

--db and --blobs default to PEFTOPS_REGISTRY_DB / PEFTOPS_REGISTRY_BLOBS, else to SQLite and
a blob directory under the state directory: $PEFTOPS_HOME, else the nearest .peftops/ in
the current directory or a parent. Commands that only read stop when there is none;
publish and register-base create ./.peftops.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .config import default_blob_uri, default_db_url
from .errors import InvalidArgument, RegistryError
from .store import Registry
from .types import AdapterVersion, Page

registry_app = typer.Typer(help="Adapter registry: publish, find, promote, export adapters.",
                           no_args_is_help=True)
# User text (names, tags, lineage) is printed literally: no markup, emoji or highlighting.
_out = Console(markup=False, emoji=False, highlight=False)
_err = Console(stderr=True, markup=False, emoji=False, highlight=False)

DbOpt = Annotated[Optional[str], typer.Option(
    "--db", envvar="PEFTOPS_REGISTRY_DB", help="SQLAlchemy URL (sqlite:///... or postgresql://...)")]
BlobsOpt = Annotated[Optional[str], typer.Option(
    "--blobs", envvar="PEFTOPS_REGISTRY_BLOBS", help="Blob store URI (file:///dir or s3://bucket/prefix)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ActorOpt = Annotated[Optional[str], typer.Option(
    "--actor", envvar="PEFTOPS_ACTOR",
    help="Who moves the aliases, recorded in their history (default: $USER)")]


@contextlib.contextmanager
def _open(db: str | None, blobs: str | None, *, create: bool = False) -> Iterator[Registry]:
    """Open the registry; turn registry errors into a one-line message and exit code 1.

    Without --db/--blobs the state directory is found upwards from the current directory;
    only the commands that create state (create=True) make a new ./.peftops."""
    try:
        db = db or default_db_url(must_exist=not create)
        blobs = blobs or default_blob_uri(must_exist=not create)
        with Registry.open(db, blobs) as reg:
            yield reg
    except RegistryError as e:
        _err.print(Text.assemble(("error:", "red"), f" {type(e).__name__}: {e}"), soft_wrap=True)
        raise typer.Exit(1) from None


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True))


def _fmt_metrics(m: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in sorted(m.items()))


def _versions_table(page: Page, title: str) -> None:
    t = Table(title=title)
    for col in ("task", "ver", "method", "status", "aliases", "metrics", "tags", "vLLM",
                "created", "adapter id"):
        t.add_column(col, no_wrap=col in ("task", "adapter id"))
    for v in page:
        t.add_row(v.task, str(v.version), v.method, v.status, ",".join(v.aliases),
                  _fmt_metrics(v.metrics), " ".join(f"{k}={x}" for k, x in v.tags.items()),
                  "yes" if v.vllm_servable else Text("no", style="yellow"),
                  v.created_at.strftime("%Y-%m-%d %H:%M"), v.adapter_id[:12])
    _out.print(t)
    if page.next_page_token:
        _out.print(f"more: --page-token {page.next_page_token}")


def _page_json(page: Page) -> dict[str, Any]:
    return {"items": [x.to_dict() for x in page], "next_page_token": page.next_page_token}


def _kv(pairs: list[str], what: str) -> dict[str, str]:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep:
            raise InvalidArgument(f"{what} {p!r} must look like key=value")
        out[k] = v
    return out


@registry_app.command("list")
def list_versions(
    task: Annotated[Optional[str], typer.Option(help="Only this task.")] = None,
    base: Annotated[Optional[str], typer.Option(help="Only this base digest.")] = None,
    method: Annotated[Optional[str], typer.Option(help="Only this method, e.g. lora.")] = None,
    alias: Annotated[Optional[str], typer.Option(help="Only versions holding this alias.")] = None,
    tag: Annotated[Optional[str], typer.Option(help="key=value")] = None,
    metric: Annotated[Optional[str], typer.Option(help="e.g. 'accuracy>=0.9'")] = None,
    created_after: Annotated[Optional[str], typer.Option(help="ISO-8601")] = None,
    created_before: Annotated[Optional[str], typer.Option(help="ISO-8601")] = None,
    status: Annotated[Optional[str], typer.Option(help="active or deprecated")] = None,
    limit: int = 100, page_token: Optional[str] = None,
    db: DbOpt = None, blobs: BlobsOpt = None, as_json: JsonOpt = False,
) -> None:
    """List / search adapter versions (newest first; by the metric with --metric)."""
    from .filters import parse_metric as _parse_metric, parse_tag as _parse_tag

    with _open(db, blobs) as reg:
        page = reg.search(task=task, base_digest=base, method=method, alias=alias,
                          tag=_parse_tag(tag) if tag else None,
                          metric=_parse_metric(metric) if metric else None,
                          created_after=created_after, created_before=created_before,
                          status=status, limit=limit, page_token=page_token)
    if as_json:
        _print_json(_page_json(page))
    else:
        _versions_table(page, "adapter versions")


registry_app.command("search", help="Same as list.")(list_versions)


@registry_app.command()
def show(task: str, version: Annotated[Optional[int], typer.Option("--version", "-v")] = None,
         alias: Annotated[Optional[str], typer.Option("--alias", "-a")] = None,
         db: DbOpt = None, blobs: BlobsOpt = None, as_json: JsonOpt = False) -> None:
    """Show one version (by number, alias, or the latest active one)."""
    with _open(db, blobs) as reg:
        v: AdapterVersion = reg.get(task, version, alias)
    if as_json:
        _print_json(v.to_dict())
        return
    t = Table(title=v.name, show_header=False)
    t.add_column(style="bold")
    t.add_column()
    d = v.to_dict()
    for k in ("task", "version", "status", "method", "adapter_id", "base_digest", "created_at",
              "vllm_servable"):
        t.add_row(k, str(d[k]))
    t.add_row("aliases", ", ".join(v.aliases))
    t.add_row("metrics", _fmt_metrics(v.metrics))
    t.add_row("tags", json.dumps(v.tags))
    t.add_row("lineage", json.dumps(v.lineage, indent=1))
    t.add_row("files", "\n".join(f"{n}  {e['size']} B  {e['sha256'][:12]}"
                                 for n, e in v.files.items()))
    t.add_row("lint", "\n".join(v.lint) or "clean")
    _out.print(t)


@registry_app.command()
def tasks(limit: int = 100, page_token: Optional[str] = None,
          db: DbOpt = None, blobs: BlobsOpt = None, as_json: JsonOpt = False) -> None:
    """List tasks with their version counts and aliases."""
    with _open(db, blobs) as reg:
        page = reg.list_tasks(limit=limit, page_token=page_token)
    if as_json:
        _print_json(_page_json(page))
        return
    t = Table(title="tasks")
    for col in ("task", "versions", "latest", "aliases", "base", "updated"):
        t.add_column(col)
    for x in page:
        t.add_row(x.name, str(x.n_versions), str(x.latest_version),
                  " ".join(f"{a}=v{n}" for a, n in sorted(x.aliases.items())),
                  x.base_digest[:19], x.updated_at.strftime("%Y-%m-%d %H:%M"))
    _out.print(t)
    if page.next_page_token:
        _out.print(f"more: --page-token {page.next_page_token}")


@registry_app.command("register-base")
def register_base(snapshot_dir: Path, digest: Annotated[str, typer.Option(help="Base digest")],
                  name: str = "gemma-3-270m", db: DbOpt = None, blobs: BlobsOpt = None,
                  as_json: JsonOpt = False) -> None:
    """Register a base model from a safetensors snapshot directory."""
    with _open(db, blobs, create=True) as reg:
        b = reg.register_base(snapshot_dir, digest=digest, name=name)
    if as_json:
        _print_json(b.to_dict())
    else:
        _out.print(f"base {b.digest} ({b.name}): {len(b.module_shapes)} modules")


@registry_app.command()
def publish(task: str, adapter_dir: Path,
            base: Annotated[str, typer.Option(help="Digest of the base it was trained on")],
            method: Annotated[str, typer.Option(help="e.g. lora, dora")] = "lora",
            metric: Annotated[Optional[list[str]], typer.Option(help="key=value, repeatable")] = None,
            tag: Annotated[Optional[list[str]], typer.Option(help="key=value, repeatable")] = None,
            alias: Annotated[Optional[list[str]], typer.Option(help="repeatable")] = None,
            lineage: Annotated[Optional[str], typer.Option(help="JSON object")] = None,
            strict: Annotated[bool, typer.Option(help="Refuse what vLLM would not serve")] = False,
            actor: ActorOpt = None,
            db: DbOpt = None, blobs: BlobsOpt = None, as_json: JsonOpt = False) -> None:
    """Publish an adapter folder as the next version of TASK."""
    from .filters import json_field as _json_field

    with _open(db, blobs, create=True) as reg:
        try:
            metrics = {k: float(v) for k, v in _kv(metric or [], "metric").items()}
        except ValueError:
            raise InvalidArgument("metric values must be numbers") from None
        v, created = reg.publish_or_get(
            task, adapter_dir, base_digest=base, method=method, metrics=metrics,
            tags=_kv(tag or [], "tag"), aliases=alias or [],
            lineage=_json_field(lineage, "lineage", dict) if lineage else {},
            strict_lint=strict, actor=actor)
    if as_json:
        _print_json({**v.to_dict(), "created": created})
        return
    _out.print(f"{'published' if created else 'already published as'} {v.name} "
               f"({v.adapter_id[:12]})")
    for w in v.lint:
        _out.print(Text.assemble(("lint:", "yellow"), f" {w}"))


@registry_app.command()
def promote(task: str, alias: str, version: int, actor: ActorOpt = None, db: DbOpt = None,
            blobs: BlobsOpt = None, as_json: JsonOpt = False) -> None:
    """Point ALIAS (e.g. production) at VERSION of TASK, moving it if needed."""
    with _open(db, blobs) as reg:
        v = reg.set_alias(task, alias, version, actor=actor)
    if as_json:
        _print_json(v.to_dict())
    else:
        _out.print(f"{task}: {alias} -> v{version}")


@registry_app.command()
def unalias(task: str, alias: str, actor: ActorOpt = None, db: DbOpt = None,
            blobs: BlobsOpt = None) -> None:
    """Remove ALIAS from TASK."""
    with _open(db, blobs) as reg:
        reg.delete_alias(task, alias, actor=actor)
    _out.print(f"{task}: {alias} removed")


@registry_app.command()
def history(task: str, alias: Annotated[Optional[str], typer.Option(
                "--alias", "-a", help="Only this alias")] = None,
            limit: Annotated[int, typer.Option(help="At most this many moves")] = 100,
            db: DbOpt = None, blobs: BlobsOpt = None, as_json: JsonOpt = False) -> None:
    """The moves of TASK's aliases, newest first: who, when, from which version to which."""
    with _open(db, blobs) as reg:
        moves = reg.alias_history(task, alias, limit=limit)
    if as_json:
        _print_json([m.to_dict() for m in moves])
        return
    t = Table(title=f"{task}: alias history")
    for col in ("alias", "from", "to", "who", "when"):
        t.add_column(col)
    for m in moves:
        t.add_row(m.alias, "-" if m.from_version is None else f"v{m.from_version}",
                  "removed" if m.to_version is None else f"v{m.to_version}", m.actor or "-",
                  m.moved_at.strftime("%Y-%m-%d %H:%M:%S"))
    _out.print(t)


@registry_app.command()
def tag(task: str, version: int, key: str, value: str, db: DbOpt = None,
        blobs: BlobsOpt = None) -> None:
    """Set a tag on a version."""
    with _open(db, blobs) as reg:
        reg.set_tag(task, version, key, value)
    _out.print(f"{task}-v{version}: {key}={value}")


@registry_app.command()
def deprecate(task: str, version: int, db: DbOpt = None, blobs: BlobsOpt = None) -> None:
    """Mark a version deprecated (kept, but no longer 'latest')."""
    with _open(db, blobs) as reg:
        reg.deprecate(task, version)
    _out.print(f"{task}-v{version} deprecated")


@registry_app.command()
def delete(task: str, version: int,
           force: Annotated[bool, typer.Option(help="Also drop its aliases")] = False,
           actor: ActorOpt = None, db: DbOpt = None, blobs: BlobsOpt = None) -> None:
    """Delete a version's metadata (its blobs go at the next gc)."""
    with _open(db, blobs) as reg:
        reg.delete(task, version, force=force, actor=actor)
    _out.print(f"{task}-v{version} deleted; run `gc` to free unreferenced blobs")


@registry_app.command()
def gc(temp_grace: Annotated[float, typer.Option(
           help="Also remove temporary files older than this many seconds")] = 3600.0,
       db: DbOpt = None, blobs: BlobsOpt = None, as_json: JsonOpt = False) -> None:
    """Delete blobs that no version references, and stale temporary files."""
    with _open(db, blobs) as reg:
        n = reg.gc(temp_grace_s=temp_grace)
    if as_json:
        _print_json({"removed": n})
    else:
        _out.print(f"removed {n} unreferenced blob(s) and stale temporary file(s)")


@registry_app.command()
def verify(quick: Annotated[bool, typer.Option(
               help="Check that blobs exist without reading their bytes")] = False,
           db: DbOpt = None, blobs: BlobsOpt = None, as_json: JsonOpt = False) -> None:
    """Check every version's blobs (present, sha256 intact), unreferenced blobs and
    leftover temporary files; exit 1 when something is wrong."""
    with _open(db, blobs) as reg:
        report = reg.verify(check_bytes=not quick)
    bad = any(report.values())
    if as_json:
        _print_json({"ok": not bad, **report})
    else:
        for kind, items in report.items():
            for item in items:
                _out.print(Text.assemble((f"{kind}:", "red"), f" {item}"))
        _out.print("registry verified: all blobs present and intact" if not bad else
                   "problems found: `gc` removes unreferenced blobs and stale temporary "
                   "files; re-publishing an adapter restores its missing or corrupt blobs")
    if bad:
        raise typer.Exit(1)


def _parse_item(reg: Registry, item: str) -> AdapterVersion:
    if "@" in item:
        task, _, alias = item.partition("@")
        return reg.get(task, alias=alias)
    task, sep, version = item.rpartition(":")
    if not sep or not version.isdigit():
        raise InvalidArgument(f"{item!r}: name adapters as task:version or task@alias")
    return reg.get(task, int(version))


@registry_app.command()
def export(out_dir: Path,
           items: Annotated[list[str], typer.Argument(help="task:version or task@alias")],
           base: Annotated[Optional[str], typer.Option(help="Refuse other bases")] = None,
           db: DbOpt = None, blobs: BlobsOpt = None, as_json: JsonOpt = False) -> None:
    """Export adapters as OUT_DIR/<task>-v<version>/ PEFT folders for peft and vLLM."""
    with _open(db, blobs) as reg:
        exported = reg.export([_parse_item(reg, i) for i in items], out_dir, base_digest=base)
    if as_json:
        _print_json([e.to_dict() for e in exported])
        return
    for e in exported:
        note = "" if e.vllm_servable else ("  (not vLLM-servable)", "yellow")
        _out.print(Text.assemble(str(e.path), note))
    _out.print("vllm serve BASE --enable-lora --lora-modules " +
               " ".join(e.lora_module for e in exported), soft_wrap=True, highlight=False)


@registry_app.command()
def fetch(task: str, dest: Path,
          version: Annotated[Optional[int], typer.Option("--version", "-v")] = None,
          alias: Annotated[Optional[str], typer.Option("--alias", "-a")] = None,
          base: Annotated[Optional[str], typer.Option(help="Refuse other bases")] = None,
          db: DbOpt = None, blobs: BlobsOpt = None) -> None:
    """Fetch one version's PEFT folder into DEST (every file sha256-verified)."""
    with _open(db, blobs) as reg:
        path = reg.fetch(task, version, alias, dest=dest, base_digest=base)
    _out.print(str(path))


def _token(value: str | None, file: Path | None, what: str) -> str | None:
    """A token given directly (visible in `ps`: prefer the file or the environment) or read
    from a file (first line, surrounding whitespace dropped)."""
    if file is None:
        return value or None
    try:
        token = file.read_text().strip()
    except OSError as e:
        raise InvalidArgument(f"cannot read the {what} file {file}: {e.strerror}") from None
    if not token:
        raise InvalidArgument(f"the {what} file {file} is empty")
    return token


@registry_app.command()
def serve(host: str = "127.0.0.1", port: int = 8080,
          write_token: Annotated[Optional[str], typer.Option(
              envvar="PEFTOPS_REGISTRY_TOKEN",
              help="Bearer token for writes (shows in `ps`: prefer --write-token-file or "
                   "the environment)")] = None,
          write_token_file: Annotated[Optional[Path], typer.Option(
              envvar="PEFTOPS_REGISTRY_TOKEN_FILE", help="File holding the write token")] = None,
          read_token: Annotated[Optional[str], typer.Option(
              envvar="PEFTOPS_REGISTRY_READ_TOKEN", help="Bearer token for reads")] = None,
          read_token_file: Annotated[Optional[Path], typer.Option(
              envvar="PEFTOPS_REGISTRY_READ_TOKEN_FILE", help="File holding the read token")
          ] = None,
          max_body_mb: Annotated[float, typer.Option(
              envvar="PEFTOPS_REGISTRY_MAX_BODY_MB", help="Largest request body (413 above)")
          ] = 64.0,
          auth_failures_per_minute: Annotated[int, typer.Option(
              envvar="PEFTOPS_REGISTRY_AUTH_FAILURES_PER_MINUTE",
              help="Failed authentications allowed per client and minute (429 beyond)")] = 30,
          mlflow_ui_url: Annotated[str, typer.Option(
              envvar="PEFTOPS_MLFLOW_UI_URL",
              help="MLflow UI the web pages link a version's run to ('' for no links)")
          ] = "http://127.0.0.1:5000",
          prefect_ui_url: Annotated[str, typer.Option(
              envvar="PEFTOPS_PREFECT_UI_URL",
              help="Prefect UI the web pages link a version's flow run to ('' for no links)")
          ] = "http://127.0.0.1:4200",
          db: DbOpt = None, blobs: BlobsOpt = None) -> None:
    """Serve the HTTP API (OpenAPI at /docs) and the web pages (at /ui). Without a write
    token it is read-only."""
    import uvicorn

    from .api import create_app

    with _open(db, blobs) as reg:
        write = _token(write_token, write_token_file, "write token")
        read = _token(read_token, read_token_file, "read token")
        if not write:
            _err.print("no write token (PEFTOPS_REGISTRY_TOKEN or --write-token-file): "
                       "serving read-only")
        _err.print(f"web pages: http://{host}:{port}/ui")
        uvicorn.run(create_app(reg, write, read, max_body_bytes=int(max_body_mb * 2**20),
                               auth_failures_per_minute=auth_failures_per_minute,
                               mlflow_ui_url=mlflow_ui_url, prefect_ui_url=prefect_ui_url),
                    host=host, port=port,
                    log_level=os.environ.get("PEFTOPS_LOG_LEVEL", "info").lower())
