"""Health and maintenance."""

from fastapi import APIRouter

from ..deps import WRITE, Reg

router = APIRouter(tags=["admin"])


@router.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.post("/gc", dependencies=WRITE)
def gc(registry: Reg) -> dict[str, int]:
    return {"removed": registry.gc()}
