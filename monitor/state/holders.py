"""Who holds a connection (its owner): the HTTP request, the WebSocket, the background work of a
request (all set by the attribution middleware), or the thread/task outside any request."""

from __future__ import annotations

import contextvars
import itertools
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


REQUEST = "request"
WEBSOCKET = "websocket"
BACKGROUND = "background"
TASK = "task"


class RequestScope:
    """The request (or WebSocket) in flight on this context; mutable, shared by every checkout
    the request makes.

    Made on every request, so it only keeps the ASGI scope: method, route and request id are read
    from it when a holder is shown. `finished` is set once the app has returned (the owner is
    gone: whatever it still holds outlived it); `response_sent` once the last body byte went out
    (checkouts after it belong to the request's background work, a separate owner).
    """

    __slots__ = (
        "_background",
        "_client_id",
        "_method",
        "_path",
        "_request_id",
        "_route",
        "finished",
        "held",
        "kind",
        "long_hold_s",
        "multi_flagged",
        "parent",
        "response_sent",
        "scope",
        "serial",
    )

    # Set by `release_scope` and `request_id` only: every request makes one of these, so the
    # constructor stores what every request needs and nothing more.
    _method: object
    _path: object
    _route: object
    _client_id: bytes | None
    _request_id: str

    def __init__(self, scope: Mapping[str, Any], serial: int = 0, kind: str = REQUEST) -> None:
        # The router writes the matched route into the scope after this object exists.
        self.scope: Mapping[str, Any] | None = scope
        self.serial = serial  # 0: numbered when first asked for its request id
        self.kind = kind
        # Connections held right now per pool (keyed by the pool's tracker): "one session per
        # request" is about one pool; several pools in one request are a read/write split.
        self.held: dict[object, int] = {}
        self.multi_flagged: set[object] | None = None  # pools already flagged for this request
        self.finished = False
        self.response_sent = False
        self.long_hold_s: float | None = None  # declared by the route: may hold this long
        self.parent: RequestScope | None = None
        self._background: RequestScope | None = None

    def background(self) -> RequestScope:
        """The owner of work the request runs after its response (FastAPI BackgroundTasks)."""
        child = self._background
        if child is None:
            child = self._background = BackgroundScope(self)
        return child

    def finish(self) -> None:
        """The app returned: this owner and its background work are over."""
        self.finished = True
        child = self._background
        if child is not None:
            child.finished = True

    @classmethod
    def named(cls, method: str, path: str, request_id: str) -> RequestScope:
        """A request known by name only (work outside ASGI, tests)."""
        headers = [(b"x-request-id", request_id.encode("latin-1"))]
        return cls({"type": "http", "method": method, "path": path, "headers": headers})

    def release_scope(self) -> None:
        """Let go of the scope, keeping only references to what a holder shows.

        Context copies made during the request (the server's keep-alive timer) keep this object
        until the connection's next request; a kept dict or header list there is a container
        the collector counts, and enough of them per request made it run several times as often.
        """
        scope = self.scope
        if scope is None:
            return
        self._method = scope.get("method")
        self._path = scope.get("path")
        self._route = scope.get("route")  # the app's route object: long-lived, not copied
        self._client_id = _client_id_header(scope)
        self.scope = None

    def _get(self, key: str) -> object:
        # The scope first: release sets the kept fields before it drops the scope.
        scope = self.scope
        return scope.get(key) if scope is not None else getattr(self, f"_{key}")

    @property
    def method(self) -> str:
        if self.kind == WEBSOCKET:
            return "WS"
        method = self._get("method")
        return str(method) if method is not None else "?"

    @property
    def path(self) -> str:
        path = self._get("path")
        return str(path) if path is not None else "?"

    @property
    def template(self) -> str | None:
        """The matched route's template (`/products/{product_id}`); None when none matched."""
        template = getattr(self._get("route"), "path", None)
        return template if isinstance(template, str) else None

    @property
    def route(self) -> str:
        """Route template, bounded in cardinality, or the raw path when no route matched."""
        template = self.template
        return template if template is not None else self.path

    @property
    def request_id(self) -> str:
        """The client's `X-Request-ID` when it is short and plain (it ends up on the dashboard),
        else one made from the process id and the serial number."""
        request_id: str | None = getattr(self, "_request_id", None)
        if request_id is None:
            with _naming:  # readers on two threads must not number one request twice
                request_id = getattr(self, "_request_id", None) or self._make_request_id()
                self._request_id = request_id
        return request_id

    def _make_request_id(self) -> str:
        scope = self.scope
        raw = _client_id_header(scope) if scope is not None else self._client_id
        candidate = raw.decode("latin-1") if raw is not None else None
        if candidate is not None and _SAFE_ID.match(candidate):
            return candidate
        if not self.serial:
            self.serial = next(_serials)
        return f"{os.getpid():x}-{self.serial}"


class BackgroundScope(RequestScope):
    """The background work of a request: named after it, but a separate owner (it runs after
    the response, and its connections are not the request's)."""

    __slots__ = ()

    def __init__(self, parent: RequestScope) -> None:
        super().__init__({}, kind=BACKGROUND)
        self.scope = None
        self.parent = parent
        self.response_sent = True
        self.finished = parent.finished

    @property
    def method(self) -> str:
        return self.parent.method if self.parent is not None else "?"

    @property
    def path(self) -> str:
        return self.parent.path if self.parent is not None else "?"

    @property
    def template(self) -> str | None:
        return self.parent.template if self.parent is not None else None

    @property
    def route(self) -> str:
        return self.parent.route if self.parent is not None else "?"

    @property
    def request_id(self) -> str:
        return self.parent.request_id if self.parent is not None else "?"


def _client_id_header(scope: Mapping[str, Any]) -> bytes | None:
    # A dict built in C, not a Python loop over the headers: this runs on every request (the
    # last X-Request-ID wins when a client repeats it). Runs as the request ends: never raises.
    try:
        value = dict(scope.get("headers", ())).get(b"x-request-id")
        return bytes(value) if value is not None else None
    except (TypeError, ValueError):
        return None


_serials = itertools.count(1)  # numbers requests that bring no usable X-Request-ID
_naming = threading.Lock()


current_request: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar(
    "pool_monitor_request", default=None
)


@dataclass(frozen=True, slots=True)
class Holder:
    """A checkout's holder as shown to readers: plain strings only."""

    kind: str  # "request", "websocket", "background" or "task" (a thread or asyncio task)
    route: str  # "GET /products/{product_id}", "background of POST /orders", thread/task name
    request_id: str | None  # the request's (or WebSocket connection's) id

    @property
    def label(self) -> str:
        """One line for logs: route and request id."""
        return self.route if self.request_id is None else f"{self.route} [{self.request_id}]"

    def to_dict(self) -> dict[str, str | None]:
        return {"kind": self.kind, "route": self.route, "request_id": self.request_id}


def describe(request: RequestScope | None, task: object) -> Holder:
    """`task`: an asyncio task, a thread's ident (the checkout path keeps only that), or a name."""
    if request is not None:
        route = f"{request.method} {request.route}"
        if request.kind == BACKGROUND:
            route = f"background of {route}"
        return Holder(request.kind, route, request.request_id)
    if isinstance(task, str):
        return Holder(TASK, task, None)
    if isinstance(task, int):
        return Holder(TASK, thread_name(task), None)
    get_name = getattr(task, "get_name", None)  # asyncio.Task
    name = get_name() if callable(get_name) else getattr(task, "name", None)  # threading.Thread
    return Holder(TASK, str(name) if name else "unknown", None)


ROUTES_COUNTED = 100  # distinct keys per by-route counter: metric labels stay bounded
OTHER_ROUTES = "(other routes)"
OUTSIDE_REQUESTS = "(no request)"
UNMATCHED_ROUTE = "(unmatched route)"


def route_key(request: RequestScope | None) -> str:
    """The key an owner is counted under, a metric label: method and route template. Never a
    raw path (unbounded, and it may carry ids); threads and tasks share one key."""
    if request is None:
        return OUTSIDE_REQUESTS
    template = request.template
    if template is None:
        return UNMATCHED_ROUTE
    key = f"{request.method} {template}"
    return f"background of {key}" if request.kind == BACKGROUND else key


def count_by_route(counts: dict[str, int], request: RequestScope | None) -> None:
    """One more for `request`'s route; past `ROUTES_COUNTED` routes, new ones count together."""
    key = route_key(request)
    if key not in counts and len(counts) >= ROUTES_COUNTED:
        key = OTHER_ROUTES
    counts[key] = counts.get(key, 0) + 1


def owner_finished(request: RequestScope | None, task: object, threads: frozenset[int]) -> bool:
    """Whether a checkout's owner is over: its request returned, its task is done, its thread
    ended (`threads`: idents alive now). A bare name (tests, work outside ASGI) never ends."""
    if request is not None:
        return request.finished
    if isinstance(task, int):
        return task not in threads
    done = getattr(task, "done", None)  # asyncio.Task
    return bool(done()) if callable(done) else False


def live_threads() -> frozenset[int]:
    return frozenset(t.ident for t in threading.enumerate() if t.ident is not None)


def thread_name(ident: int) -> str:
    for thread in threading.enumerate():
        if thread.ident == ident:
            return thread.name
    return f"thread {ident} (ended)"
