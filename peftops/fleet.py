"""The fleet section of the parameters: which engine runs the tasks and what each task asks for.

``runner: local`` runs the tasks in threads of the flow's process (no Ray needed); ``runner: ray``
runs each task's pipeline in a Ray worker process of the cluster at ``address`` (``auto``: the
``RAY_ADDRESS`` environment variable or a cluster started on this machine; empty: a private
local one), with ``num_cpus`` / ``num_gpus`` / ``memory_gb`` per task. A worker that dies
mid-task is replaced and the task re-run up to ``retries`` times; its training resumes from its
last checkpoint when ``train.checkpoint_every`` > 0.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from peftops.errors import ConfigError

RUNNERS = ("local", "ray")


class FleetConfig(BaseModel):
    """How a fleet runs its tasks (``fleet`` in params.yaml; every field has a default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    runner: Literal["local", "ray"] = "local"
    address: str = "auto"  # Ray cluster address (host:port, ray://host:port, auto, or "" for a private one)
    num_cpus: float = Field(1.0, gt=0)  # per task; also the task's torch threads
    num_gpus: float = Field(0.0, ge=0)
    memory_gb: float = Field(0.0, ge=0)  # per task, 0 = no memory request
    retries: int = Field(2, ge=0)  # re-runs of a task whose worker died

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.num_cpus))

    def remote_options(self) -> dict[str, Any]:
        """The Ray task options of one fleet task (system failures retried, task errors not)."""
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "max_retries": self.retries, "retry_exceptions": False}
        if self.num_gpus:
            opts["num_gpus"] = self.num_gpus
        if self.memory_gb:
            opts["memory"] = int(self.memory_gb * 1024 ** 3)
        return opts


def fleet_config(value: Any = None, **overrides: Any) -> FleetConfig:
    """A ``FleetConfig`` from a mapping (or an existing one) plus non-None overrides; an invalid
    value is a ``ConfigError`` naming the ``fleet.<field>``."""
    base = value.model_dump() if isinstance(value, FleetConfig) else dict(value or {})
    base.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return FleetConfig(**base)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "fleet"
        raise ConfigError(f"fleet.{field}", first["msg"]) from None
