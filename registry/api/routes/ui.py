"""The registry in a browser: server-rendered pages under /ui (no build step, no CDN).

Tasks; a task's versions with their metrics and % of FFT, its aliases and their history;
one version with its tags, lineage (links to the MLflow run and the Prefect flow run), files
and the commands that export and load it; search by tag, method and metric. Every value
shown is escaped (Jinja2 autoescape). With a read token set, the pages take the token from
the login form's cookie (see guard.py) or an Authorization header.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from ...errors import RegistryError, UnknownMetric
from ...filters import parse_metric, parse_tag
from ..deps import Reg, settings
from .tasks import Limit, Task, Version

COOKIE = "peftops_token"
_HERE = Path(__file__).resolve().parent.parent
STATIC_DIR = _HERE / "static"
_env = Environment(loader=FileSystemLoader(_HERE / "templates"),
                   autoescape=select_autoescape(default=True, default_for_string=True))

router = APIRouter(prefix="/ui", include_in_schema=False)


def _page(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    reg = request.app.state.registry
    s = settings(request)
    try:
        names = reg.metric_names()
    except RegistryError:
        names = []
    html = _env.get_template(template).render(
        q=ctx.pop("q", {}), metric_names=names,
        logged_in=bool(s.read_token or s.write_token) and COOKIE in request.cookies, **ctx)
    return HTMLResponse(html, status_code=status,
                        headers={"Content-Security-Policy": "default-src 'self'; "
                                 "frame-ancestors 'none'", "X-Content-Type-Options": "nosniff",
                                 "Referrer-Policy": "same-origin", "Cache-Control": "no-store"})


def _next_url(path: str, params: dict[str, Any], token: str | None) -> str | None:
    if not token:
        return None
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{path}?{urlencode({**kept, 'page_token': token})}"


@router.get("")
def tasks_page(request: Request, registry: Reg, limit: Limit = 100,
               page_token: str | None = None) -> HTMLResponse:
    page = registry.list_tasks(limit=limit, page_token=page_token)
    return _page(request, "tasks.html", tasks=page.items,
                 next_url=_next_url("/ui", {"limit": limit}, page.next_page_token))


@router.get("/tasks/{task}")
def task_page(request: Request, task: Task, registry: Reg, limit: Limit = 100,
              page_token: str | None = None) -> HTMLResponse:
    info = registry.get_task(task)
    page = registry.versions(task, limit=limit, page_token=page_token)
    return _page(request, "task.html", task=task, versions=page.items, aliases=info.aliases,
                 history=registry.alias_history(task),
                 next_url=_next_url(f"/ui/tasks/{quote(task)}", {"limit": limit},
                                    page.next_page_token))


def _commands(request: Request, v) -> list[tuple[str, str]]:
    item = shlex.quote(f"{v.task}:{v.version}")
    folder = shlex.quote(f"./{v.task}-v{v.version}")
    base = str(request.base_url).rstrip("/")
    return [
        ("export a PEFT folder (and a vLLM --lora-modules line):",
         f"peftops registry export ./adapters {item}"),
        ("fetch it into a folder (every file sha256-verified):",
         f"peftops registry fetch {shlex.quote(v.task)} {folder} --version {v.version}"),
        ("over HTTP (a tar of the PEFT folder):",
         f"curl -fsS -X POST {shlex.quote(base + '/export')} -H 'Content-Type: application/json' "
         + ("-H \"Authorization: Bearer $PEFTOPS_REGISTRY_READ_TOKEN\" "
            if settings(request).read_token else "")
         + f"-d {shlex.quote(json.dumps({'items': [[v.task, v.version]]}))} "
         f"-o {shlex.quote(f'{v.task}-v{v.version}.tar')}"),
        ("load it with peft on the pinned base:",
         "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n"
         "base = AutoModelForCausalLM.from_pretrained(\".peftops/base/gemma-3-270m\")\n"
         f"model = PeftModel.from_pretrained(base, {json.dumps(f'./{v.task}-v{v.version}')})"),
    ]


@router.get("/tasks/{task}/versions/{version}")
def version_page(request: Request, task: Task, version: Version, registry: Reg) -> HTMLResponse:
    v = registry.get(task, version)
    s = settings(request)
    lineage = v.lineage if isinstance(v.lineage, dict) else {}
    run_id, flow_run = lineage.get("mlflow_run_id"), lineage.get("prefect_flow_run_id")
    mlflow_url = f"{s.mlflow_ui_url.rstrip('/')}/#/runs/{quote(run_id, safe='')}" \
        if isinstance(run_id, str) and run_id and s.mlflow_ui_url else None
    prefect_url = f"{s.prefect_ui_url.rstrip('/')}/runs/flow-run/{quote(flow_run, safe='')}" \
        if isinstance(flow_run, str) and flow_run and s.prefect_ui_url else None
    return _page(request, "version.html", v=v, mlflow_url=mlflow_url, prefect_url=prefect_url,
                 lineage_json=json.dumps(lineage, indent=2, sort_keys=True, default=str),
                 commands=_commands(request, v))


@router.get("/search")
def search_page(request: Request, registry: Reg,
                tag: Annotated[str | None, Query(max_length=2048)] = None,
                method: Annotated[str | None, Query(max_length=200)] = None,
                metric: Annotated[str | None, Query(max_length=300)] = None,
                task: Annotated[str | None, Query(max_length=200)] = None,
                limit: Limit = 100, page_token: str | None = None) -> HTMLResponse:
    q = {"tag": tag, "method": method, "metric": metric, "task": task}
    try:
        page = registry.search(task=task or None, method=method or None,
                               tag=parse_tag(tag) if tag else None,
                               metric=parse_metric(metric) if metric else None,
                               limit=limit, page_token=page_token)
    except UnknownMetric as e:
        return _page(request, "search.html", 422, q=q, error=str(e), known_metrics=e.known)
    except RegistryError as e:
        return _page(request, "search.html", 422, q=q, error=str(e).split("\n", 1)[0])
    return _page(request, "search.html", q=q, versions=page.items,
                 next_url=_next_url("/ui/search", {**q, "limit": limit}, page.next_page_token))


def _safe_next(target: str) -> str:
    """Only a path of this site's pages (no open redirect)."""
    return target if target.startswith("/ui") and not target.startswith("/ui/login") \
        and "//" not in target and "\\" not in target else "/ui"


@router.get("/login")
def login_page(request: Request, next: str = "/ui") -> HTMLResponse:
    return _page(request, "login.html", next=_safe_next(next))


@router.post("/login")
def login(request: Request, token: Annotated[str, Form(max_length=4096)],
          next: Annotated[str, Form(max_length=2048)] = "/ui"):
    s = settings(request)
    limiter = request.app.state.auth_limiter
    client = request.client.host if request.client else "unknown"
    if limiter.blocked(client):
        return _page(request, "login.html", 429, next=_safe_next(next),
                     error="too many failed logins; retry in a minute")
    if not s.token_ok(f"Bearer {token}", write=False):
        limiter.fail(client)
        return _page(request, "login.html", 401, next=_safe_next(next), error="wrong token")
    resp = RedirectResponse(_safe_next(next), status_code=303)
    resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/",
                    secure=request.url.scheme == "https")
    return resp


@router.post("/logout")
def logout() -> RedirectResponse:
    resp = RedirectResponse("/ui", status_code=303)
    resp.delete_cookie(COOKIE, path="/")
    return resp
