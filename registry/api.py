"""HTTP API of the registry (FastAPI; the OpenAPI schema is at /openapi.json).

Writes need `Authorization: Bearer <write token>`; reads are open unless a read token is
configured, in which case either token may read. Endpoints are plain `def`s: FastAPI runs
them in its thread pool, and the registry is safe to share between threads.
"""

import io
import json
import secrets
import shutil
import tarfile
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel as Schema, Field

from . import names
from .errors import (BasePinMismatch, Conflict, CorruptBlob, InvalidAdapter, InvalidArgument,
                     InvalidName, LintError, NotFound, RegistryError)
from .query import METRIC_OPS
from .store import Registry

_STATUS = [(NotFound, 404), (BasePinMismatch, 409), (Conflict, 409), (LintError, 422),
           (InvalidName, 422), (InvalidArgument, 422), (InvalidAdapter, 422),
           (CorruptBlob, 500)]


class VersionOut(Schema):
    task: str
    version: int
    adapter_id: str
    base_digest: str
    method: str
    status: str
    created_at: datetime
    metrics: dict[str, float]
    tags: dict[str, str]
    aliases: list[str]
    lineage: dict[str, Any]
    files: dict[str, dict[str, Any]]
    lint: list[str]
    vllm_servable: bool


class VersionPage(Schema):
    items: list[VersionOut]
    next_page_token: str | None = None


class TaskOut(Schema):
    name: str
    base_digest: str
    n_versions: int
    latest_version: int
    aliases: dict[str, int]
    created_at: datetime
    updated_at: datetime


class TaskPage(Schema):
    items: list[TaskOut]
    next_page_token: str | None = None


class BaseOut(Schema):
    digest: str
    name: str
    created_at: datetime
    n_modules: int


class BaseIn(Schema):
    digest: str
    name: str = "gemma-3-270m"
    module_shapes: dict[str, list[int]]
    config: dict[str, Any] = Field(default_factory=dict)


class AliasIn(Schema):
    version: int


class TagIn(Schema):
    value: str


class ExportIn(Schema):
    items: list[tuple[str, int]]
    base_digest: str | None = None


def _parse_metric(text: str) -> tuple[str, str, float]:
    for op in sorted(METRIC_OPS, key=len, reverse=True):  # ">=" before ">"
        key, sep, value = text.partition(op)
        if sep:
            try:
                return key.strip(), op, float(value)
            except ValueError:
                break
    raise InvalidArgument(f"metric filter {text!r} must look like 'accuracy>=0.9'")


def _parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise InvalidArgument(f"tag filter {text!r} must look like 'key=value'")
    return key, value


def _json_field(text: str, what: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"{what} must be JSON: {e}") from None
    if not isinstance(value, kind):
        raise InvalidArgument(f"{what} must be a JSON {kind.__name__}")
    return value


def create_app(registry: Registry, write_token: str | None,
               read_token: str | None = None) -> FastAPI:
    """The HTTP API over `registry`. Without a write token every write is refused."""
    app = FastAPI(title="peftops adapter registry", version="1",
                  description="Versioned PEFT adapters for pinned base models.")
    bearer = HTTPBearer(auto_error=False)

    def _check(creds: HTTPAuthorizationCredentials | None, *tokens: str | None) -> None:
        given = creds.credentials if creds is not None else ""
        if not any(t and secrets.compare_digest(given.encode(), t.encode()) for t in tokens):
            raise HTTPException(401, "missing or invalid bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    def can_write(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]):
        if not write_token:
            raise HTTPException(403, "writes are disabled: start the server with a write token")
        _check(creds, write_token)

    def can_read(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]):
        if read_token:
            _check(creds, read_token, write_token)

    R = [Depends(can_read)]
    W = [Depends(can_write)]

    @app.exception_handler(RegistryError)
    def _registry_error(_request: Request, exc: RegistryError) -> JSONResponse:
        code = next((c for cls, c in _STATUS if isinstance(exc, cls)), 400)
        body: dict[str, Any] = {"error": type(exc).__name__, "detail": str(exc)}
        if isinstance(exc, LintError):
            body["problems"] = exc.problems
        return JSONResponse(body, status_code=code)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    # ---------------------------------------------------------------- bases
    @app.get("/bases", dependencies=R)
    def list_bases() -> list[BaseOut]:
        return [BaseOut(**b.to_dict()) for b in registry.list_bases()]

    @app.get("/bases/{digest}", dependencies=R)
    def get_base(digest: str) -> BaseOut:
        return BaseOut(**registry.get_base(digest).to_dict())

    @app.post("/bases", dependencies=W, status_code=201)
    def register_base(body: BaseIn) -> BaseOut:
        return BaseOut(**registry.register_base_shapes(
            digest=body.digest, name=body.name, module_shapes=body.module_shapes,
            config=body.config).to_dict())

    # ---------------------------------------------------------------- reads
    @app.get("/tasks", dependencies=R)
    def list_tasks(limit: int = 100, page_token: str | None = None) -> TaskPage:
        page = registry.list_tasks(limit=limit, page_token=page_token)
        return TaskPage(items=[TaskOut(**t.to_dict()) for t in page],
                        next_page_token=page.next_page_token)

    def _page(page) -> VersionPage:
        return VersionPage(items=[VersionOut(**v.to_dict()) for v in page],
                           next_page_token=page.next_page_token)

    @app.get("/versions", dependencies=R)
    def search(task: str | None = None, base_digest: str | None = None,
               method: str | None = None, alias: str | None = None,
               tag: Annotated[str | None, Query(description="key=value")] = None,
               metric: Annotated[str | None, Query(description="e.g. accuracy>=0.9")] = None,
               created_after: datetime | None = None, created_before: datetime | None = None,
               status: str | None = None, limit: int = 100,
               page_token: str | None = None) -> VersionPage:
        return _page(registry.search(
            task=task, base_digest=base_digest, method=method, alias=alias,
            tag=_parse_tag(tag) if tag is not None else None,
            metric=_parse_metric(metric) if metric is not None else None,
            created_after=created_after, created_before=created_before, status=status,
            limit=limit, page_token=page_token))

    @app.get("/tasks/{task}/versions", dependencies=R)
    def task_versions(task: str, limit: int = 100,
                      page_token: str | None = None) -> VersionPage:
        return _page(registry.versions(task, limit=limit, page_token=page_token))

    @app.get("/tasks/{task}/latest", dependencies=R)
    def latest(task: str) -> VersionOut:
        return VersionOut(**registry.get(task).to_dict())

    @app.get("/tasks/{task}/versions/{version}", dependencies=R)
    def get_version(task: str, version: int) -> VersionOut:
        return VersionOut(**registry.get(task, version).to_dict())

    @app.get("/tasks/{task}/aliases/{alias}", dependencies=R)
    def get_alias(task: str, alias: str) -> VersionOut:
        return VersionOut(**registry.get(task, alias=alias).to_dict())

    @app.get("/tasks/{task}/versions/{version}/files/{filename}", dependencies=R,
             response_class=Response)
    def get_file(task: str, version: int, filename: str) -> Response:
        """One file of a version, its sha256 verified before a byte is sent."""
        v = registry.get(task, version)
        if filename not in v.files:
            raise NotFound(f"{v.name} has no file {filename!r}; it has {sorted(v.files)}")
        with tempfile.TemporaryDirectory() as tmp:
            dest = Path(tmp) / names.file_name(filename)
            registry.blobs.get(v.files[filename]["sha256"], dest)
            data = dest.read_bytes()
        return Response(data, media_type="application/octet-stream",
                        headers={"X-Sha256": v.files[filename]["sha256"]})

    @app.post("/export", dependencies=R, response_class=Response)
    def export(body: ExportIn) -> Response:
        """A tar archive of <task>-v<version>/ PEFT folders plus lora_modules.txt."""
        with tempfile.TemporaryDirectory() as tmp:
            registry.export(body.items, Path(tmp) / "export", base_digest=body.base_digest)
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for p in sorted((Path(tmp) / "export").iterdir()):
                    tar.add(p, arcname=p.name)
        return Response(buf.getvalue(), media_type="application/x-tar")

    # ---------------------------------------------------------------- writes
    @app.post("/tasks/{task}/versions", dependencies=W, status_code=201)
    def publish(task: str, response: Response,
                files: Annotated[list[UploadFile], File(description="the adapter folder")],
                base_digest: Annotated[str, Form()], method: Annotated[str, Form()],
                metrics: Annotated[str, Form(description="JSON object")] = "{}",
                tags: Annotated[str, Form(description="JSON object")] = "{}",
                lineage: Annotated[str, Form(description="JSON object")] = "{}",
                aliases: Annotated[str, Form(description="JSON list")] = "[]",
                strict_lint: Annotated[bool, Form()] = False) -> VersionOut:
        """Publish the uploaded files (adapter_config.json, adapter_model.safetensors, ...).
        201 for a new version, 200 when identical content was already published."""
        names.task_name(task)
        tmp = Path(tempfile.mkdtemp(prefix="peftops-upload-"))
        try:
            for f in files:
                dest = tmp / names.file_name(f.filename or "")
                with dest.open("wb") as out:
                    shutil.copyfileobj(f.file, out)
            v, created = registry.publish_or_get(
                task, tmp, base_digest=base_digest, method=method,
                metrics=_json_field(metrics, "metrics", dict),
                tags=_json_field(tags, "tags", dict),
                lineage=_json_field(lineage, "lineage", dict),
                aliases=_json_field(aliases, "aliases", list), strict_lint=strict_lint)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not created:
            response.status_code = 200
        return VersionOut(**v.to_dict())

    @app.put("/tasks/{task}/aliases/{alias}", dependencies=W)
    def set_alias(task: str, alias: str, body: AliasIn) -> VersionOut:
        return VersionOut(**registry.set_alias(task, alias, body.version).to_dict())

    @app.delete("/tasks/{task}/aliases/{alias}", dependencies=W, status_code=204)
    def delete_alias(task: str, alias: str) -> None:
        registry.delete_alias(task, alias)

    @app.put("/tasks/{task}/versions/{version}/tags/{key:path}", dependencies=W)
    def set_tag(task: str, version: int, key: str, body: TagIn) -> VersionOut:
        registry.set_tag(task, version, key, body.value)
        return VersionOut(**registry.get(task, version).to_dict())

    @app.delete("/tasks/{task}/versions/{version}/tags/{key:path}", dependencies=W,
                status_code=204)
    def delete_tag(task: str, version: int, key: str) -> None:
        registry.delete_tag(task, version, key)

    @app.post("/tasks/{task}/versions/{version}/deprecate", dependencies=W)
    def deprecate(task: str, version: int) -> VersionOut:
        registry.deprecate(task, version)
        return VersionOut(**registry.get(task, version).to_dict())

    @app.post("/tasks/{task}/versions/{version}/reactivate", dependencies=W)
    def reactivate(task: str, version: int) -> VersionOut:
        registry.reactivate(task, version)
        return VersionOut(**registry.get(task, version).to_dict())

    @app.delete("/tasks/{task}/versions/{version}", dependencies=W, status_code=204)
    def delete_version(task: str, version: int, force: bool = False) -> None:
        registry.delete(task, version, force=force)

    @app.post("/gc", dependencies=W)
    def gc() -> dict[str, int]:
        return {"removed": registry.gc()}

    return app
