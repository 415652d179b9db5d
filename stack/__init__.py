"""The shared services of a fleet, started on one machine as real processes (``peftops stack``).

PostgreSQL (existing server: the stack creates its databases), an S3 endpoint (moto's server),
an MLflow tracking server (PostgreSQL backend store, S3 artifact root), a Prefect API server
(PostgreSQL) and a Ray head, all on 127.0.0.1. Their addresses are written to
``<state dir>/stack.env`` (and ``stack.json``), which ``peftops fleet`` reads when present.

This package imports neither Prefect, MLflow nor Ray: it starts them as programs.
"""

from stack.services import (ENV_FILE, STATE_FILE, StackError, StackSpec, down, load_env, read_state, status,
                            up)

__all__ = ["ENV_FILE", "STATE_FILE", "StackError", "StackSpec", "down", "load_env", "read_state", "status", "up"]
