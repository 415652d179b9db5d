"""Versions: search across tasks, publish, and the mutations of one version."""

import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile

from ... import names
from ...filters import json_field, parse_metric, parse_tag
from ..deps import READ, WRITE, Actor, Reg
from ..schemas import TagIn, VersionOut, VersionPage, version_out
from .tasks import Limit, Task, Version, version_page

router = APIRouter(tags=["versions"])
ONE = "/tasks/{task}/versions/{version}"


@router.get("/versions", dependencies=READ)
def search(registry: Reg, task: str | None = None, base_digest: str | None = None,
           method: str | None = None, alias: str | None = None,
           tag: Annotated[str | None, Query(description="key=value")] = None,
           metric: Annotated[str | None, Query(description="e.g. accuracy>=0.9")] = None,
           created_after: datetime | None = None, created_before: datetime | None = None,
           status: str | None = None, limit: Limit = 100,
           page_token: str | None = None) -> VersionPage:
    return version_page(registry.search(
        task=task, base_digest=base_digest, method=method, alias=alias,
        tag=parse_tag(tag) if tag is not None else None,
        metric=parse_metric(metric) if metric is not None else None,
        created_after=created_after, created_before=created_before, status=status,
        limit=limit, page_token=page_token))


@router.post("/tasks/{task}/versions", dependencies=WRITE, status_code=201)
def publish(task: Task, response: Response, registry: Reg, actor: Actor,
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
    fields = dict(metrics=json_field(metrics, "metrics", dict),
                  tags=json_field(tags, "tags", dict),
                  lineage=json_field(lineage, "lineage", dict),
                  aliases=json_field(aliases, "aliases", list))
    tmp = Path(tempfile.mkdtemp(prefix="peftops-upload-"))
    try:
        for f in files:
            with (tmp / names.file_name(f.filename or "")).open("wb") as out:
                shutil.copyfileobj(f.file, out)
        v, created = registry.publish_or_get(task, tmp, base_digest=base_digest,
                                             method=method, strict_lint=strict_lint,
                                             actor=actor, **fields)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not created:
        response.status_code = 200
    return version_out(v)


@router.put(ONE + "/tags/{key:path}", dependencies=WRITE)
def set_tag(task: Task, version: Version, key: str, body: TagIn, registry: Reg) -> VersionOut:
    registry.set_tag(task, version, key, body.value)
    return version_out(registry.get(task, version))


@router.delete(ONE + "/tags/{key:path}", dependencies=WRITE, status_code=204)
def delete_tag(task: Task, version: Version, key: str, registry: Reg) -> None:
    registry.delete_tag(task, version, key)


@router.post(ONE + "/deprecate", dependencies=WRITE)
def deprecate(task: Task, version: Version, registry: Reg) -> VersionOut:
    registry.deprecate(task, version)
    return version_out(registry.get(task, version))


@router.post(ONE + "/reactivate", dependencies=WRITE)
def reactivate(task: Task, version: Version, registry: Reg) -> VersionOut:
    registry.reactivate(task, version)
    return version_out(registry.get(task, version))


@router.delete(ONE, dependencies=WRITE, status_code=204)
def delete_version(task: Task, version: Version, registry: Reg, actor: Actor,
                   force: bool = False) -> None:
    registry.delete(task, version, force=force, actor=actor)
