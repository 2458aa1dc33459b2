"""ASGI middleware: each request's checkouts know its method, route template and request id."""

from __future__ import annotations

import itertools
import os
import re
from typing import Any

from monitor.state.holders import RequestScope, current_request

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_PREFIX = f"{os.getpid():x}-"


class AttributionMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): sets a context variable, nothing else."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._ids = itertools.count(1)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = RequestScope(scope["method"], scope["path"], self._request_id(scope), scope)
        token = current_request.set(request)
        try:
            await self.app(scope, receive, send)
        finally:
            current_request.reset(token)

    def _request_id(self, scope: Any) -> str:
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                candidate: str = value.decode("latin-1")
                # Only a short, plain id is trusted: it ends up on the dashboard.
                if _SAFE_ID.match(candidate):
                    return candidate
                break
        return f"{_PREFIX}{next(self._ids)}"
