"""Mirror our registry into MLflow's Model Registry: read the registry, hand the tracker plain data.

Our registry is the source of truth; this module only reads it. The MLflow side (one
registered model ``peftops-<task>`` per task, a model version per registry version, aliases
kept equal to ours) is :meth:`peftops.pipeline.tracking.Tracker.mirror_to_model_registry`.
Used by the pipeline after a publish when ``tracking.mirror_registry`` is on, and by
``peftops mlflow-mirror`` to resync at any time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftops.pipeline.tracking import MirrorReport, MirrorVersion, Tracker

_PAGE = 1000  # the registry's largest page


def registry_versions(reg: Any, task: str) -> list[MirrorVersion]:
    """Every version of ``task`` in the registry ``reg``, with its aliases, as the mirror's data.

    Each version carries its own aliases (read in the same row), so an alias never points at
    a version this list lacks; ``fetch`` reads the version's files from ``reg`` (which must
    stay open while the mirror runs)."""
    out: list[MirrorVersion] = []
    token = None
    while True:
        page = reg.versions(task, limit=_PAGE, page_token=token)
        for v in page.items:
            lineage = v.lineage or {}
            out.append(MirrorVersion(
                version=v.version, adapter_id=v.adapter_id, base_digest=v.base_digest, method=v.method,
                status=v.status, aliases=tuple(v.aliases),
                run_id=_text(lineage.get("mlflow_run_id")), model_id=_text(lineage.get("mlflow_model_id")),
                fetch=lambda dest, n=v.version: reg.fetch(task, n, dest=Path(dest))))
        token = page.next_page_token
        if not token:
            return sorted(out, key=lambda m: m.version)


def mirror_task(tracker: Tracker, reg: Any, task: str) -> MirrorReport:
    """Make MLflow's registered model ``peftops-<task>`` match ``task`` in ``reg``."""
    return tracker.mirror_to_model_registry(task, registry_versions(reg, task))


def all_tasks(reg: Any) -> list[str]:
    """Every task name in the registry, in name order."""
    names: list[str] = []
    token = None
    while True:
        page = reg.list_tasks(limit=_PAGE, page_token=token)
        names += [t.name for t in page.items]
        token = page.next_page_token
        if not token:
            return names


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
