"""Aliases (production, staging, ...): names that point at one version of a task."""

from fastapi import APIRouter

from ..deps import READ, WRITE, Actor, Reg
from ..schemas import AliasIn, AliasMoveOut, VersionOut, version_out
from .tasks import Alias, Limit, Task

router = APIRouter(prefix="/tasks/{task}/aliases", tags=["aliases"])


@router.get("/{alias}", dependencies=READ)
def get_alias(task: Task, alias: Alias, registry: Reg) -> VersionOut:
    return version_out(registry.get(task, alias=alias))


@router.get("/{alias}/history", dependencies=READ)
def alias_history(task: Task, alias: Alias, registry: Reg,
                  limit: Limit = 100) -> list[AliasMoveOut]:
    """The alias's moves, newest first (who, when, from which version to which)."""
    return [AliasMoveOut(**m.to_dict()) for m in registry.alias_history(task, alias, limit)]


@router.put("/{alias}", dependencies=WRITE)
def set_alias(task: Task, alias: Alias, body: AliasIn, registry: Reg,
              actor: Actor) -> VersionOut:
    """Point the alias at a version. X-Peftops-Actor names who does it (alias history)."""
    return version_out(registry.set_alias(task, alias, body.version, actor=actor))


@router.delete("/{alias}", dependencies=WRITE, status_code=204)
def delete_alias(task: Task, alias: Alias, registry: Reg, actor: Actor) -> None:
    registry.delete_alias(task, alias, actor=actor)
