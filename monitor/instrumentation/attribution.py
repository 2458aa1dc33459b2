"""ASGI middleware: each request's checkouts know its method, route template and request id."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable
from typing import Any

from monitor.state.holders import RequestScope, current_request


class AttributionMiddleware:
    """Pure ASGI, and not even a coroutine: it sets a context variable and hands the request on.

    No reset afterwards, and so no `await` layer of its own (each layer is resumed at every
    `await` below it, about 15 times per request): ASGI servers run each request in a task of its
    own, whose context ends with it, and a next request on the same task sets the variable anew.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._serials = itertools.count(1)

    def __call__(self, scope: Any, receive: Any, send: Any) -> Awaitable[None]:
        if scope["type"] == "http":
            current_request.set(RequestScope(scope, next(self._serials)))
        awaitable: Awaitable[None] = self.app(scope, receive, send)
        return awaitable
