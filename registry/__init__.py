"""Adapter registry: versioned PEFT adapters for pinned base models.

    from registry import Registry
    reg = Registry.open()                      # SQLite + files under $PEFTOPS_HOME
    reg.register_base(snapshot_dir, digest=d)  # once per base
    v = reg.publish("sst2", adapter_dir, base_digest=d, method="lora")
    reg.set_alias("sst2", "production", v.version)
    reg.fetch("sst2", alias="production", dest=out, base_digest=d)
"""

from .blobs import BLOB_STORES, BlobStore, FileBlobStore, S3BlobStore, open_blob_store
from .errors import (BasePinMismatch, BlobIntegrityError, Conflict, CorruptBlob,
                     InvalidAdapter, InvalidArgument, InvalidName, LintError, NotFound,
                     RegistryError, UnknownMetric)
from .lint import LintReport, lint_adapter
from .shapes import module_shapes_from_state_dict, read_safetensors_header
from .store import PublishRequest, Registry
from .types import AdapterVersion, AliasMove, BaseModel, ExportedAdapter, Page, TaskInfo

__all__ = [
    "AdapterVersion", "AliasMove", "BLOB_STORES", "BaseModel", "BasePinMismatch", "BlobIntegrityError",
    "BlobStore", "Conflict", "CorruptBlob", "ExportedAdapter", "FileBlobStore",
    "InvalidAdapter", "InvalidArgument", "InvalidName", "LintError", "LintReport",
    "NotFound", "Page", "PublishRequest", "Registry", "RegistryError", "S3BlobStore", "TaskInfo",
    "UnknownMetric",
    "lint_adapter", "module_shapes_from_state_dict", "open_blob_store",
    "read_safetensors_header",
]
