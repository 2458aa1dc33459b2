"""ASGI middleware: each request's checkouts know its method, route template and request id."""

from __future__ import annotations

from typing import Any

from monitor.state.holders import RequestScope, current_request


class AttributionMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): sets a context variable, nothing else.

    When the request ends, the variable is reset and the request lets go of the ASGI scope:
    context copies made during the request (asyncio handles such as the server's keep-alive
    timer, worker-thread calls) outlive it, and a scope reachable from them made each request's
    objects a reference cycle left to the garbage collector (measured: ten times the collections
    and about 4% more CPU per request).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = RequestScope(scope)
        token = current_request.set(request)
        try:
            await self.app(scope, receive, send)
        finally:
            request.release_scope()
            current_request.reset(token)
