"""Who holds a connection: the HTTP request (set by the attribution middleware) or the thread/task."""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass
from typing import Any


class RequestScope:
    """The request in flight on this context; mutable, shared by every checkout the request makes."""

    __slots__ = ("connections_held", "method", "multi_flagged", "path", "request_id", "scope")

    def __init__(self, method: str, path: str, request_id: str, scope: Any = None) -> None:
        self.method = method
        self.path = path
        self.request_id = request_id
        # The ASGI scope: the router writes the matched route into it after this object exists.
        self.scope = scope
        self.connections_held = 0
        self.multi_flagged = False

    @property
    def route(self) -> str:
        """Route template (`/products/{product_id}`), bounded in cardinality, or the raw path."""
        route = self.scope.get("route") if isinstance(self.scope, dict) else None
        template = getattr(route, "path", None)
        return template if isinstance(template, str) else self.path


current_request: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar(
    "pool_monitor_request", default=None
)


@dataclass(frozen=True, slots=True)
class Holder:
    """A checkout's holder as shown to readers: plain strings only."""

    kind: str  # "request" or "task"
    route: str  # "GET /products/{product_id}" or the thread/task name
    request_id: str | None

    def to_dict(self) -> dict[str, str | None]:
        return {"kind": self.kind, "route": self.route, "request_id": self.request_id}


def describe(request: RequestScope | None, task: object) -> Holder:
    """`task`: an asyncio task, a thread's ident (the checkout path keeps only that), or a name."""
    if request is not None:
        return Holder("request", f"{request.method} {request.route}", request.request_id)
    if isinstance(task, str):
        return Holder("task", task, None)
    if isinstance(task, int):
        return Holder("task", thread_name(task), None)
    get_name = getattr(task, "get_name", None)  # asyncio.Task
    name = get_name() if callable(get_name) else getattr(task, "name", None)  # threading.Thread
    return Holder("task", str(name) if name else "unknown", None)


def thread_name(ident: int) -> str:
    for thread in threading.enumerate():
        if thread.ident == ident:
            return thread.name
    return f"thread {ident} (ended)"
