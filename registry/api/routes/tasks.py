"""Tasks and their versions, read by number, alias or as the latest."""

from typing import Annotated

from fastapi import APIRouter, Path, Query

from ...names import SCHEMA_PATTERNS
from ..deps import READ, Reg
from ..schemas import MAX_VERSION, TaskOut, TaskPage, VersionOut, VersionPage, version_out

router = APIRouter(tags=["tasks"], dependencies=READ)

Limit = Annotated[int, Query(ge=1, le=1000)]
Version = Annotated[int, Path(ge=1, le=MAX_VERSION)]
Task = Annotated[str, Path(pattern=SCHEMA_PATTERNS["task"])]
Alias = Annotated[str, Path(pattern=SCHEMA_PATTERNS["alias"])]


def version_page(page) -> VersionPage:
    return VersionPage(items=[version_out(v) for v in page],
                       next_page_token=page.next_page_token)


@router.get("/tasks")
def list_tasks(registry: Reg, limit: Limit = 100, page_token: str | None = None) -> TaskPage:
    page = registry.list_tasks(limit=limit, page_token=page_token)
    return TaskPage(items=[TaskOut(**t.to_dict()) for t in page],
                    next_page_token=page.next_page_token)


@router.get("/tasks/{task}/versions")
def task_versions(task: Task, registry: Reg, limit: Limit = 100,
                  page_token: str | None = None) -> VersionPage:
    return version_page(registry.versions(task, limit=limit, page_token=page_token))


@router.get("/tasks/{task}/latest")
def latest(task: Task, registry: Reg) -> VersionOut:
    return version_out(registry.get(task))


@router.get("/tasks/{task}/versions/{version}")
def get_version(task: Task, version: Version, registry: Reg) -> VersionOut:
    return version_out(registry.get(task, version))
