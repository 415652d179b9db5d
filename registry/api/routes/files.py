"""Bytes out: one file of a version, or an export archive; both streamed from disk."""

import shutil
import tarfile
import tempfile
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from ... import names
from ...errors import NotFound
from ..deps import READ, Reg
from ..schemas import ExportIn
from .tasks import Task, Version

router = APIRouter(tags=["files"], dependencies=READ)


def _streamed(path: Path, tmp: Path, media_type: str, **headers: str) -> FileResponse:
    """Send a file in chunks, then remove its temporary folder."""
    return FileResponse(path, media_type=media_type, headers=headers,
                        background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True))


@router.get("/tasks/{task}/versions/{version}/files/{filename}",
            response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
def get_file(task: Task, version: Version, filename: str, registry: Reg) -> FileResponse:
    """One file of a version, its sha256 verified before a byte is sent."""
    v = registry.get(task, version)
    if filename not in v.files:
        raise NotFound(f"{v.name} has no file {filename!r}; it has {sorted(v.files)}")
    tmp = Path(tempfile.mkdtemp(prefix="peftops-file-"))
    try:
        dest = tmp / names.file_name(filename)
        registry.blobs.get(v.files[filename]["sha256"], dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _streamed(dest, tmp, "application/octet-stream",
                     **{"X-Sha256": v.files[filename]["sha256"]})


@router.post("/export", response_class=FileResponse,
             responses={200: {"content": {"application/x-tar": {}}}})
def export(body: ExportIn, registry: Reg) -> FileResponse:
    """A tar archive of <task>-v<version>/ PEFT folders plus lora_modules.txt."""
    tmp = Path(tempfile.mkdtemp(prefix="peftops-export-"))
    try:
        out = tmp / "export"
        registry.export(body.items, out, base_digest=body.base_digest)
        archive = tmp / "export.tar"
        with tarfile.open(archive, mode="w") as tar:
            for p in sorted(out.iterdir()):
                tar.add(p, arcname=p.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _streamed(archive, tmp, "application/x-tar")
