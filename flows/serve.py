# peftops serve [--file prefect.yaml] [--name nightly-fleet ...]   (needs PREFECT_API_URL)
"""Serve the deployments declared in ``prefect.yaml`` from this process, on their schedules.

``prefect.yaml`` is the one declaration of the deployments: ``prefect deploy --all`` registers
them against their work pools (a worker then runs them), and ``peftops serve`` runs the same
entrypoints, parameters and schedules in-process without a worker. Either way a Prefect server
must be running: Prefect's ephemeral mode cannot schedule.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
from pathlib import Path
from typing import Any

from peftops.config import load_yaml
from peftops.errors import ConfigError


class NoServer(RuntimeError):
    """No Prefect server is configured (PREFECT_API_URL is unset)."""


def api_url() -> str | None:
    """The configured Prefect API URL, if any."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def load_deployments(path: str | Path = "prefect.yaml", names: list[str] | None = None) -> list[dict[str, Any]]:
    """The ``deployments`` entries of a prefect.yaml (only ``names`` when given), validated by
    Prefect's own model of the file (what ``prefect deploy`` reads)."""
    from prefect.cli.deploy._models import PrefectYamlModel
    from pydantic import ValidationError

    p = Path(path)
    if not p.exists():
        raise ConfigError("prefect.yaml", f"file not found: {p}")
    raw = load_yaml(p, "deployments file") or {}
    try:
        model = PrefectYamlModel.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(".".join(str(x) for x in first["loc"]), first["msg"], str(p)) from None
    deps = [d.model_dump(exclude_unset=True, mode="json") for d in model.deployments]
    known = [d.get("name") for d in deps]
    if names:
        missing = sorted(set(names) - set(known))
        if missing:
            raise ConfigError("deployments", f"no deployment named {missing[0]!r}; {p} has {', '.join(known)}", str(p))
        deps = [d for d in deps if d.get("name") in names]
    return deps


def schedule_of(spec: dict[str, Any]):
    """One prefect.yaml schedule entry (cron, interval or rrule), converted as ``prefect deploy`` does."""
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.client.schemas.actions import DeploymentScheduleCreate

    try:
        return DeploymentScheduleCreate(**_schedule_config_to_deployment_schedule(spec))
    except ValueError as err:
        raise ConfigError("schedules", f"{err}: {spec}") from None


def load_flow(entrypoint: str):
    """``path/to/module.py:flow_name`` (or ``package.module:flow_name``) -> the flow object."""
    target, _, name = entrypoint.partition(":")
    module = target[:-3].replace("/", ".") if target.endswith(".py") else target
    return getattr(importlib.import_module(module), name)


def to_deployments(specs: list[dict[str, Any]]) -> list:
    """RunnerDeployments for ``flow.serve`` from prefect.yaml entries (work pools are ignored)."""
    out = []
    for d in specs:
        fl = load_flow(d["entrypoint"])
        out.append(fl.to_deployment(
            name=d["name"], description=d.get("description"), tags=d.get("tags") or [],
            parameters=d.get("parameters") or {}, version=d.get("version"),
            concurrency_limit=d.get("concurrency_limit"),
            schedules=[schedule_of(s) for s in d.get("schedules") or []]))
    return out


def serve(path: str | Path = "prefect.yaml", names: list[str] | None = None, limit: int | None = 1) -> None:
    """Serve the deployments until stopped (Ctrl-C or SIGTERM: a graceful stop either way), at
    most ``limit`` flow runs at a time (one by default: a training run already uses every core).
    Refuses without a Prefect server."""
    if not api_url():
        raise NoServer("no Prefect server configured: start one (`prefect server start --host 127.0.0.1`) and "
                       "set PREFECT_API_URL=http://127.0.0.1:4200/api; Prefect's ephemeral mode cannot schedule")
    from prefect.runner import Runner

    runner = Runner(limit=limit)
    for deployment in to_deployments(load_deployments(path, names)):
        runner.add_deployment(deployment)
    # Ctrl-C takes the same graceful path as SIGTERM (Prefect's runner handles only the latter).
    signal.signal(signal.SIGINT, lambda *_: runner.handle_sigterm())
    asyncio.run(runner.start())


if __name__ == "__main__":
    serve()
