"""Checks made before a request body is read: the token, the body's size, and the rate of
failed authentications per client (pure ASGI, in front of the routes).

Route dependencies check the tokens again; doing it here first means an unauthenticated
client cannot make the server read, parse or spool a body, and a client guessing tokens
is slowed to ``auth_failures_per_minute``.
"""

from __future__ import annotations

import json

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from .deps import ApiSettings

_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# no token needed, even with a read token set (static files of the pages, no data)
_OPEN_PATHS = ("/health", "/docs-assets/", "/redoc-assets/", "/ui-assets/")
_LOGIN_PATHS = frozenset({"/ui/login", "/ui/logout"})  # the login form checks the token itself
_READ_POSTS = frozenset({"/export"})  # POST with a body that only reads
_UI = "/ui"
_COOKIE = b"peftops_token"


class AuthLimiter:
    """Failed authentications per client address and minute (shared by the guard and the
    login form)."""

    def __init__(self, per_minute: int):
        self._limit = RateLimitItemPerMinute(max(1, per_minute))
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def blocked(self, client: str) -> bool:
        return not self._limiter.test(self._limit, "auth", client)

    def fail(self, client: str) -> None:
        self._limiter.hit(self._limit, "auth", client)


def _cookie_token(headers: dict[bytes, bytes]) -> str:
    """The web pages' login cookie (see routes/ui.py), or ''."""
    for part in headers.get(b"cookie", b"").split(b";"):
        name, _, value = part.strip().partition(b"=")
        if name == _COOKIE:
            return value.decode("latin-1").strip('"')
    return ""


async def _redirect_to_login(send, path: str) -> None:
    from urllib.parse import quote

    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", f"/ui/login?next={quote(path, safe='/')}".encode()),
                            (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


async def _send_error(send, status: int, error: str, detail: str,
                      headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    def __init__(self, app, settings: ApiSettings, limiter: AuthLimiter | None = None):
        self.app = app
        self.settings = settings
        self._auth = limiter or AuthLimiter(settings.auth_failures_per_minute)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        s = self.settings
        method, path = scope["method"], scope["path"]
        headers = dict(scope.get("headers") or [])
        client = (scope.get("client") or ("unknown", 0))[0]
        write = method not in _READ_METHODS and path not in _READ_POSTS
        needs_token = (write and s.write_token) or (not write and s.read_token)
        page = path == _UI or path.startswith(_UI + "/")
        if needs_token and not path.startswith(_OPEN_PATHS) and path not in _LOGIN_PATHS:
            if self._auth.blocked(client):
                return await _send_error(send, 429, "TooManyRequests",
                                         "too many failed authentications; retry later",
                                         [(b"retry-after", b"60")])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            if page and not write and not auth:  # a browser: the login form's cookie
                cookie = _cookie_token(headers)
                if not s.token_ok(f"Bearer {cookie}", write=False):
                    if cookie:
                        self._auth.fail(client)
                    return await _redirect_to_login(send, path)
            elif not s.token_ok(auth, write=write):
                self._auth.fail(client)
                return await _send_error(send, 401, "Unauthorized",
                                         "missing or invalid bearer token",
                                         [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await _send_error(send, 400, "BadRequest", "invalid Content-Length")
            if n > s.max_body_bytes:
                return await _send_error(send, 413, "PayloadTooLarge",
                                         f"request body of {n:,} bytes is over the limit of "
                                         f"{s.max_body_bytes:,}")
        elif b"transfer-encoding" in headers:  # a body of unknown size: refused unread
            return await _send_error(send, 411, "LengthRequired",
                                     "send the request body with a Content-Length")
        return await self.app(scope, receive, send)
