"""The dashboard token: a bearer header, or a cookie set by a login form POST (never a URL).

A token in a URL ends up in access logs, proxies and browser history, so the URL is not a way
in; `TokenGate` extends the same check to the demo routes, which break the app on purpose.
"""

from __future__ import annotations

import hashlib
import hmac
import html
from collections.abc import Iterable
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_COOKIE = "pool_monitor_session"
MAX_LOGIN_BODY = 4096  # a form with one token field
_NO_STORE = {"Cache-Control": "no-store"}

login_router = APIRouter(prefix="/monitor", tags=["monitor"])


def expected_token(request: Request) -> str | None:
    """The configured token, from the monitor or (while it failed to start) the settings."""
    monitor = getattr(request.app.state, "pool_monitor", None)
    token = getattr(monitor, "dashboard_token", None)
    if not token:
        token = getattr(getattr(request.app.state, "settings", None), "dashboard_token", None)
    return token if isinstance(token, str) and token else None


def _cookie_value(token: str) -> str:
    # The cookie carries a digest of the token, so a leaked cookie jar does not reveal it.
    return hmac.new(token.encode(), b"pool-monitor dashboard session", hashlib.sha256).hexdigest()


def _same(offered: str, expected: str) -> bool:
    return hmac.compare_digest(offered.encode(), expected.encode())


def is_authorized(request: Request, token: str) -> bool:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and _same(credentials.strip(), token):
        return True
    cookie = request.cookies.get(TOKEN_COOKIE)
    return cookie is not None and _same(cookie, _cookie_value(token))


def authorize(request: Request) -> Response | None:
    """None when allowed; else a 401: the login form for a browser, JSON for everything else."""
    token = expected_token(request)
    if token is None or is_authorized(request, token):
        return None
    if _wants_page(request):
        return _login_page(request, status_code=401)
    return refusal()


def refusal() -> JSONResponse:
    return JSONResponse(
        {"detail": "dashboard token required"},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="pool-monitor"', **_NO_STORE},
    )


def _wants_page(request: Request) -> bool:
    # A browser opening the dashboard, not an htmx poll or an API client.
    return (
        request.method == "GET"
        and request.url.path.rstrip("/").endswith("/monitor")
        and "text/html" in request.headers.get("accept", "")
        and "hx-request" not in request.headers
    )


def _login_page(request: Request, *, status_code: int, wrong: bool = False) -> HTMLResponse:
    action = html.escape(request.scope.get("root_path", "") + "/monitor/login", quote=True)
    note = '<p role="alert">That token is not the right one.</p>' if wrong else ""
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>pool-monitor: sign in</title></head><body>"
        "<h1>pool-monitor</h1><p>This dashboard needs its token (MONITOR_DASHBOARD_TOKEN).</p>"
        f'{note}<form method="post" action="{action}">'
        '<label>Token <input type="password" name="token" autocomplete="current-password" '
        'required autofocus></label> <button type="submit">Open the dashboard</button>'
        "</form></body></html>"
    )
    return HTMLResponse(body, status_code=status_code, headers=_NO_STORE)


@login_router.post("/login", include_in_schema=False)
async def login(request: Request) -> Response:
    """Trade the token (form field `token`, in the body) for an HttpOnly session cookie."""
    token = expected_token(request)
    if token is None:
        return RedirectResponse(_dashboard(request), status_code=303, headers=_NO_STORE)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_LOGIN_BODY:
            return JSONResponse({"detail": "login form too large"}, status_code=413)
    try:
        fields = parse_qs(body.decode(), max_num_fields=4)
    except (UnicodeDecodeError, ValueError):
        fields = {}
    offered = (fields.get("token") or [""])[0]
    if not _same(offered, token):
        return _login_page(request, status_code=401, wrong=True)
    response = RedirectResponse(_dashboard(request), status_code=303, headers=_NO_STORE)
    response.set_cookie(
        TOKEN_COOKIE,
        _cookie_value(token),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        # The whole app: the dashboard's demo buttons post to /demo/*, which the token covers.
        path=request.scope.get("root_path", "") + "/",
    )
    return response


def _dashboard(request: Request) -> str:
    root: str = request.scope.get("root_path", "")
    return root + "/monitor/"


class TokenGate:
    """ASGI middleware: requests under `prefixes` need the dashboard token, when one is set."""

    def __init__(self, app: ASGIApp, prefixes: Iterable[str]) -> None:
        self.app = app
        self.prefixes = tuple(prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefixes):
            request = Request(scope)
            token = expected_token(request)
            if token is not None and not is_authorized(request, token):
                await refusal()(scope, receive, send)
                return
        await self.app(scope, receive, send)
