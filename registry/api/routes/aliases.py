"""Aliases (production, staging, ...): names that point at one version of a task."""

from fastapi import APIRouter

from ..deps import READ, WRITE, Reg
from ..schemas import AliasIn, VersionOut, version_out
from .tasks import Alias, Task

router = APIRouter(prefix="/tasks/{task}/aliases", tags=["aliases"])


@router.get("/{alias}", dependencies=READ)
def get_alias(task: Task, alias: Alias, registry: Reg) -> VersionOut:
    return version_out(registry.get(task, alias=alias))


@router.put("/{alias}", dependencies=WRITE)
def set_alias(task: Task, alias: Alias, body: AliasIn, registry: Reg) -> VersionOut:
    return version_out(registry.set_alias(task, alias, body.version))


@router.delete("/{alias}", dependencies=WRITE, status_code=204)
def delete_alias(task: Task, alias: Alias, registry: Reg) -> None:
    registry.delete_alias(task, alias)
