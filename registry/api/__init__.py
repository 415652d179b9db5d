"""HTTP API of the registry (FastAPI; the OpenAPI schema is at /openapi.json).

Writes need `Authorization: Bearer <write token>`; reads are open unless a read token is
configured, in which case either token may read (the schema and the docs pages too). Tokens
and body sizes are checked before a body is read (guard.py). Endpoints are plain `def`s:
FastAPI runs them in its thread pool, and the registry is safe to share between threads.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (BasePinMismatch, Conflict, CorruptBlob, InvalidAdapter, InvalidArgument,
                      InvalidName, LintError, NotFound, RegistryError, StorageUnavailable,
                      UnknownMetric)
from ..store import Registry
from .deps import AUTH_FAILURES_PER_MINUTE, MAX_BODY_BYTES, ApiSettings
from .guard import AuthLimiter, RequestGuard
from .routes import admin, aliases, bases, files, tasks, ui, versions
from .schemas import ErrorOut

__all__ = ["ApiSettings", "create_app"]

_STATUS = [(NotFound, 404), (BasePinMismatch, 409), (Conflict, 409), (LintError, 422),
           (InvalidName, 422), (InvalidArgument, 422), (InvalidAdapter, 422),
           (StorageUnavailable, 503), (CorruptBlob, 500)]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text} for code, text in [
        (401, "missing or invalid token"), (403, "writes are disabled"),
        (404, "not found"), (409, "conflicts with what is stored"),
        (413, "request body too large"), (422, "invalid request"),
        (429, "too many failed authentications"), (503, "a storage backend is unavailable")]}
# An absolute path (or a file:// or sqlite:/// URL of one) in a message: shown as its last
# component. Network URLs (s3://bucket/..., http://host/...) are left as they are.
_PATH = re.compile(r"(?<![\w:/.])(?:[A-Za-z][\w+.-]*:/{2,3})?(?:/[\w.@+-]+)+/?")


def scrub(text: str) -> str:
    """A message without the server's file system paths in it."""
    return _PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or "/", text)


def _error(status: int, error: str, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "detail": scrub(detail), **extra}, status_code=status)


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RegistryError)
    def _registry_error(request: Request, exc: RegistryError):
        code = next((c for cls, c in _STATUS if isinstance(exc, cls)), 400)
        if request.url.path.startswith("/ui/"):  # the web pages: a page, not JSON
            from html import escape

            return HTMLResponse(
                '<!doctype html><link rel="stylesheet" href="/ui-assets/ui.css">'
                f'<main><p class="error" id="error">{escape(scrub(str(exc).split(chr(10))[0]))}'
                '</p><p><a href="/ui">all tasks</a></p></main>', status_code=code)
        extra: dict[str, Any] = {"problems": [scrub(p) for p in exc.problems]} \
            if isinstance(exc, LintError) else {}
        if isinstance(exc, UnknownMetric):
            extra["known_metrics"] = exc.known
        return _error(code, type(exc).__name__, str(exc).split("\n", 1)[0], **extra)

    @app.exception_handler(RequestValidationError)
    def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', '')}"
                    for e in exc.errors()]
        names_only = all(e.get("type") == "string_pattern_mismatch" for e in exc.errors())
        return _error(422, "InvalidName" if names_only else "InvalidArgument",
                      "; ".join(problems) or "invalid request", problems=problems)

    @app.exception_handler(StarletteHTTPException)
    def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        resp = _error(exc.status_code, type(exc).__name__ if exc.status_code >= 500 else
                      {401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
                       405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError"),
                      str(exc.detail))
        resp.headers.update(getattr(exc, "headers", None) or {})
        return resp

    @app.exception_handler(Exception)
    def _unexpected(_request: Request, _exc: Exception) -> JSONResponse:
        return _error(500, "InternalError", "internal error; see the server log")


_REDOC_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
              "worker-src 'self' blob:; object-src 'none'; base-uri 'none'")


def _install_docs(app: FastAPI) -> None:
    """/docs (Swagger UI, from the pinned swagger-ui-bundle package) and /redoc (ReDoc, from
    the pinned fastapi-offline package's static files): no CDN, no web fonts. The pages are
    guarded like the schema they load; their static assets are open (guard.py)."""
    from importlib.resources import files

    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")
    # only the package's data files: its FastAPI subclass is not used
    redoc_dir = files("fastapi_offline") / "static"
    app.mount("/redoc-assets", StaticFiles(directory=str(redoc_dir)), name="redoc-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title + " - docs",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        page = get_redoc_html(openapi_url="/openapi.json", title=app.title + " - ReDoc",
                              redoc_js_url="/redoc-assets/redoc.standalone.js",
                              redoc_favicon_url="/redoc-assets/favicon.png",
                              with_google_fonts=False)
        # the bundle's "API docs by Redocly" footer loads its logo from cdn.redoc.ly: the
        # browser is told to load nothing from elsewhere (the footer then shows text only)
        page.headers["content-security-policy"] = _REDOC_CSP
        return page


def create_app(registry: Registry, write_token: str | None = None,
               read_token: str | None = None, *, max_body_bytes: int = MAX_BODY_BYTES,
               auth_failures_per_minute: int = AUTH_FAILURES_PER_MINUTE,
               mlflow_ui_url: str | None = None, prefect_ui_url: str | None = None) -> FastAPI:
    """The HTTP API over `registry`, and its web pages at /ui. Without a write token every
    write is refused. mlflow_ui_url / prefect_ui_url: where the pages link a version's
    MLflow run and Prefect flow run."""
    app = FastAPI(title="peftops adapter registry", version="1",
                  description="Versioned PEFT adapters for pinned base models.",
                  docs_url=None, redoc_url=None, responses=_ERRORS)
    settings = ApiSettings(write_token or None, read_token or None, max_body_bytes,
                           auth_failures_per_minute, mlflow_ui_url or None,
                           prefect_ui_url or None)
    app.state.registry = registry
    app.state.settings = settings
    app.state.auth_limiter = AuthLimiter(auth_failures_per_minute)
    _install_handlers(app)
    _install_docs(app)
    for module in (admin, bases, tasks, versions, aliases, files, ui):
        app.include_router(module.router)
    app.mount("/ui-assets", StaticFiles(directory=ui.STATIC_DIR), name="ui-assets")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/ui")

    app.add_middleware(RequestGuard, settings=settings, limiter=app.state.auth_limiter)
    return app
