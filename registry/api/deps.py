"""What every route shares, as FastAPI dependencies: the registry, and the token checks."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..store import Registry

MAX_BODY_BYTES = 64 * 1024 * 1024
AUTH_FAILURES_PER_MINUTE = 30


@dataclass(frozen=True)
class ApiSettings:
    """How one app instance is protected (kept in app.state.settings)."""

    write_token: str | None = None
    read_token: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES  # larger request bodies get 413 before being read
    auth_failures_per_minute: int = AUTH_FAILURES_PER_MINUTE  # per client address, then 429
    mlflow_ui_url: str | None = None  # the web pages link a version's MLflow run here
    prefect_ui_url: str | None = None  # ... and its Prefect flow run here

    def token_ok(self, header: str | None, *, write: bool) -> bool:
        """Whether an Authorization header value grants a write (or a read)."""
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            given = ""
        tokens = (self.write_token,) if write else (self.read_token, self.write_token)
        return any(t and secrets.compare_digest(given.encode(), t.encode()) for t in tokens)


bearer = HTTPBearer(auto_error=False, description="the write token, or the read token for reads")
Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def settings(request: Request) -> ApiSettings:
    return request.app.state.settings


def registry(request: Request) -> Registry:
    """The app's registry (one instance, shared between the worker threads)."""
    return request.app.state.registry


Reg = Annotated[Registry, Depends(registry)]


def _unauthorized() -> HTTPException:
    return HTTPException(401, "missing or invalid bearer token",
                         headers={"WWW-Authenticate": "Bearer"})


def can_write(request: Request, creds: Creds) -> None:
    s = settings(request)
    if not s.write_token:
        raise HTTPException(403, "writes are disabled: start the server with a write token")
    if creds is None or not s.token_ok(f"Bearer {creds.credentials}", write=True):
        raise _unauthorized()


def can_read(request: Request, creds: Creds) -> None:
    s = settings(request)
    if s.read_token and (creds is None or
                         not s.token_ok(f"Bearer {creds.credentials}", write=False)):
        raise _unauthorized()


ACTOR_HEADER = "X-Peftops-Actor"


def actor(request: Request) -> str:
    """Who makes a write, for the alias history: the X-Peftops-Actor header when given, else
    the credential used ("write-token"). The header is checked like any recorded text."""
    return request.headers.get(ACTOR_HEADER) or "write-token"


Actor = Annotated[str, Depends(actor)]
READ = [Depends(can_read)]
WRITE = [Depends(can_write)]
