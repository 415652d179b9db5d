"""Base models: the pins adapters are checked against."""

from fastapi import APIRouter

from ..deps import READ, WRITE, Reg
from ..schemas import BaseIn, BaseOut

router = APIRouter(prefix="/bases", tags=["bases"])


@router.get("", dependencies=READ)
def list_bases(registry: Reg) -> list[BaseOut]:
    return [BaseOut(**b.to_dict()) for b in registry.list_bases()]


@router.get("/{digest}", dependencies=READ)
def get_base(digest: str, registry: Reg) -> BaseOut:
    return BaseOut(**registry.get_base(digest).to_dict())


@router.post("", dependencies=WRITE, status_code=201)
def register_base(body: BaseIn, registry: Reg) -> BaseOut:
    return BaseOut(**registry.register_base_shapes(
        digest=body.digest, name=body.name, module_shapes=body.module_shapes,
        config=body.config).to_dict())
