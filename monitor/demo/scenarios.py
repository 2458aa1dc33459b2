"""Demo scenarios: POST routes under /demo that each break one rule of the connection guide.

They use only SQLAlchemy, FastAPI and `app.state`; the monitor must notice them on its own.
Whatever they hold lives in a `Holdings` registry and is released after a time limit.
"""

# No `from __future__ import annotations`: the routes' parameter types are built inside
# `demo_router` and FastAPI must evaluate them there.
import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, NamedTuple, Protocol

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, status
from pydantic import BaseModel
from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from monitor.demo.db import SessionDep
from monitor.demo.models import Product
from monitor.settings import Settings

log = logging.getLogger(__name__)

MAX_SLOW_QUERY_S = 30.0
# Above any pool the settings allow (pool_size + max_overflow <= 2000): a larger count is a
# typo worth a 422, anything below is clamped to what the pool can give.
MAX_COUNT = 2000
# The reaper re-checks at least this often, so a loop iteration never sleeps longer.
_REAPER_TICK_S = 0.5


class Scenario(NamedTuple):
    path: str
    title: str
    explanation: str


SCENARIOS: list[Scenario] = [
    Scenario(
        "/demo/leak",
        "Leak a session",
        "Opens a session, runs a query and never closes it (breaks 'always close sessions').",
    ),
    Scenario(
        "/demo/gc-leak",
        "Drop a session unclosed",
        "Lets a used session go out of scope without close(); the garbage collector quietly "
        "returns its connection (breaks 'always close sessions').",
    ),
    Scenario(
        "/demo/idle-in-transaction",
        "Never commit",
        "Writes in a session and neither commits nor rolls back, leaving the connection idle "
        "in transaction (breaks 'commit explicitly').",
    ),
    Scenario(
        "/demo/slow-query",
        "Slow query",
        "Runs pg_sleep for `seconds` under a server-side statement_timeout, like a query on an "
        "unindexed column (breaks 'index frequently queried columns').",
    ),
    Scenario(
        "/demo/exhaust",
        "Exhaust the pool",
        "Checks out every connection of the pool, so other requests wait pool_timeout and get "
        "503 (breaks 'size the pool for the load').",
    ),
    Scenario(
        "/demo/two-sessions",
        "Two sessions in one request",
        "Opens two sessions at once in one request and uses both (breaks 'one session per "
        "request').",
    ),
    Scenario(
        "/demo/release",
        "Release everything",
        "Closes every session and connection the demo scenarios hold.",
    ),
]


class ScenarioResult(BaseModel):
    """What a scenario did; `release_at` is when its holdings are released at the latest."""

    scenario: str
    held: int  # connections this call holds after returning
    held_total: int  # connections all demo scenarios hold now
    release_at: datetime | None = None
    released: int = 0
    detail: str


# ---- the registry of held resources ----------------------------------------------------------


class _Closeable(Protocol):
    def close(self) -> None: ...


@dataclass(slots=True)
class _Hold:
    scenario: str
    resources: list[_Closeable]
    deadline: float  # monotonic


class Holdings:
    """Thread-safe registry of what the scenarios hold; a reaper thread releases each at its deadline.

    `reserve` grants connection slots atomically, so concurrent POSTs cannot exceed a limit.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Condition(threading.Lock())
        self._holds: list[_Hold] = []
        self._reserved = 0
        self._reaper: threading.Thread | None = None
        self._closed = False

    @property
    def held(self) -> int:
        """Connections held right now (reservations not yet filled excluded)."""
        with self._lock:
            return self._held_locked()

    @property
    def busy(self) -> int:
        """Connections held plus those reserved by scenarios still taking them."""
        with self._lock:
            return self._held_locked() + self._reserved

    def reserve(self, wanted: int, limit: int) -> int:
        """Grant up to `wanted` slots while held + reserved stays within `limit`; 0 when full."""
        with self._lock:
            if self._closed:
                return 0
            granted = max(0, min(wanted, limit - self._held_locked() - self._reserved))
            self._reserved += granted
            return granted

    def keep(
        self, scenario: str, resources: list[_Closeable], hold_s: float, reserved: int
    ) -> datetime:
        """Register what a scenario took (filling its reservation); returns the release time."""
        release_at = datetime.now(UTC) + timedelta(seconds=hold_s)
        with self._lock:
            self._reserved -= reserved
            if self._closed:
                late = True
            else:
                late = False
                self._holds.append(_Hold(scenario, resources, self._clock() + hold_s))
                self._ensure_reaper()
                self._lock.notify_all()
        if late:  # the app is shutting down: nothing may outlive it
            _close_all(resources)
        return release_at

    def cancel(self, reserved: int) -> None:
        """Give back slots reserved but not taken."""
        with self._lock:
            self._reserved -= reserved

    def release_all(self) -> int:
        """Close everything held now; returns how many connections were released."""
        with self._lock:
            holds, self._holds = self._holds, []
            self._lock.notify_all()
        return sum(_close_all(hold.resources) for hold in holds)

    def close(self) -> int:
        """Release everything and refuse further holdings (app shutdown)."""
        with self._lock:
            self._closed = True
            reaper = self._reaper
        released = self.release_all()
        if reaper is not None:
            reaper.join(timeout=2 * _REAPER_TICK_S)
        return released

    def _held_locked(self) -> int:
        return sum(len(hold.resources) for hold in self._holds)

    def _ensure_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap, name="demo-holdings", daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        # Bounded: every hold has a deadline, and the thread ends once nothing is held.
        while True:
            with self._lock:
                now = self._clock()
                due = [hold for hold in self._holds if hold.deadline <= now]
                self._holds = [hold for hold in self._holds if hold.deadline > now]
                if not due:
                    if not self._holds or self._closed:
                        self._reaper = None
                        return
                    next_deadline = min(hold.deadline for hold in self._holds)
                    self._lock.wait(timeout=min(_REAPER_TICK_S, max(0.0, next_deadline - now)))
                    continue
            for hold in due:  # closing talks to the database: never under the lock
                released = _close_all(hold.resources)
                log.info(
                    "demo %s: released %d connection(s) after its TTL", hold.scenario, released
                )


def _close_all(resources: list[_Closeable]) -> int:
    released = 0
    for resource in resources:
        try:
            resource.close()
            released += 1
        except Exception as exc:  # a dead connection still leaves the pool on close
            log.warning("demo release: closing %s failed (%s)", type(resource).__name__, exc)
    return released


# ---- the cross-site guard ---------------------------------------------------------------------


def _origin_of(request: Request) -> str:
    return _normalise_origin(f"{request.url.scheme}://{request.headers.get('host', '')}")


def _normalise_origin(origin: str) -> str:
    origin = origin.strip().lower().rstrip("/")
    for scheme, port in (("http://", ":80"), ("https://", ":443")):
        if origin.startswith(scheme) and origin.endswith(port):
            return origin[: -len(port)]
    return origin


def require_same_origin(
    request: Request,
    hx_request: Annotated[
        str | None, Header(description="`true`, as HTMX sends it (or send X-Requested-With)")
    ] = None,
    x_requested_with: Annotated[str | None, Header()] = None,
) -> None:
    """Refuse anything a page on another site could make a browser send (403)."""
    fetch_site = (request.headers.get("sec-fetch-site") or "").lower()
    if fetch_site in ("cross-site", "same-site"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"demo refused: {fetch_site} request")
    origin = request.headers.get("origin")
    if origin is not None and _normalise_origin(origin) != _origin_of(request):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "demo refused: foreign Origin")
    # A custom header cannot come from a plain cross-origin form, and this app allows no CORS.
    if (hx_request or "").lower() != "true" and not x_requested_with:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "demo refused: send HX-Request: true or X-Requested-With"
        )


# ---- wiring ----------------------------------------------------------------------------------


def install_demo(app: FastAPI, settings: Settings) -> Holdings:
    """Add the /demo routes and their `Holdings` (on `app.state.demo_holdings`); starts nothing."""
    holdings = Holdings()
    app.state.demo_holdings = holdings
    app.include_router(demo_router(settings))
    log.warning(
        "demo scenario routes are enabled: POST /demo/* deliberately leak connections "
        "(held at most %g s); never enable them in production",
        settings.demo_hold_ttl_s,
    )
    return holdings


def release_demo(app: FastAPI) -> int:
    """Release everything the scenarios hold (app shutdown); 0 when the demo is not installed."""
    holdings: Holdings | None = getattr(app.state, "demo_holdings", None)
    if holdings is None:
        return 0
    released = holdings.close()
    if released:
        log.info("demo: released %d held connection(s) at shutdown", released)
    return released


def demo_router(settings: Settings) -> APIRouter:
    """The /demo routes; parameter bounds come from the settings so the 422s match the schema."""
    ttl = settings.demo_hold_ttl_s
    capacity = settings.pool_size + settings.max_overflow
    # Leak-style scenarios leave one connection so the CRUD routes keep working.
    leak_limit = max(0, capacity - 1)

    HoldS = Annotated[
        float,
        Query(gt=0, le=ttl, allow_inf_nan=False, description=f"seconds to hold, at most {ttl:g}"),
    ]
    Count = Annotated[
        int, Query(ge=1, le=MAX_COUNT, description="sessions to take, clamped to the pool")
    ]
    Seconds = Annotated[
        float,
        Query(gt=0, le=MAX_SLOW_QUERY_S, allow_inf_nan=False, description="at most 30"),
    ]

    router = APIRouter(
        prefix="/demo",
        tags=["demo"],
        dependencies=[Depends(require_same_origin)],
        responses={
            403: {"description": "Cross-site request refused"},
            409: {"description": "The demo already holds as much as it may"},
            503: {"description": "No connection became free in time"},
        },
    )

    @router.post("/leak", response_model=ScenarioResult)
    def leak(request: Request, hold_s: HoldS = ttl, count: Count = 1) -> ScenarioResult:
        """Opens a session, runs a query and never closes it (breaks 'always close sessions')."""
        factory = _factory(request)

        def take() -> _Closeable:
            session = factory()
            session.scalar(select(func.count()).select_from(Product))
            return session  # no close(): the registry keeps it alive, as a global would

        return _hold(request, "leak", take, count, leak_limit, hold_s)

    @router.post("/gc-leak", response_model=ScenarioResult)
    def gc_leak(request: Request) -> ScenarioResult:
        """Lets a used session go out of scope without close(); the garbage collector quietly returns its connection (breaks 'always close sessions')."""
        _ensure_schema(request)
        _query_and_drop(_factory(request))
        # Sessions sit in reference cycles: the collector, not refcounting, frees them.
        gc.collect()
        return _result(request, "gc-leak", 0, None, "session dropped unclosed; gc.collect() ran")

    @router.post("/idle-in-transaction", response_model=ScenarioResult)
    def idle_in_transaction(
        request: Request, hold_s: HoldS = ttl, count: Count = 1
    ) -> ScenarioResult:
        """Writes in a session and neither commits nor rolls back, leaving the connection idle in transaction (breaks 'commit explicitly')."""
        factory = _factory(request)

        def take() -> _Closeable:
            session = factory()
            session.add(Product(name="uncommitted (demo)", price=Decimal("0.00")))
            session.flush()  # the INSERT runs; no commit, so its transaction stays open
            return session

        return _hold(request, "idle-in-transaction", take, count, leak_limit, hold_s)

    @router.post("/slow-query", response_model=ScenarioResult)
    def slow_query(request: Request, session: SessionDep, seconds: Seconds = 2.0) -> ScenarioResult:
        """Runs pg_sleep for `seconds` under a server-side statement_timeout, like a query on an unindexed column (breaks 'index frequently queried columns')."""
        # A slow query holds its connection as long as a leak does: it counts against the cap.
        holdings = _holdings(request)
        if holdings.reserve(1, leak_limit) == 0:
            raise _full(holdings, "slow-query")
        try:
            # The server enforces the bound too (SET LOCAL), whatever the client side does.
            timeout_ms = str(int(seconds * 1000) + 1000)
            session.execute(
                text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": timeout_ms}
            )
            session.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
            session.rollback()  # nothing to keep; ends the transaction of the SET LOCAL
        finally:
            holdings.cancel(1)
        return _result(request, "slow-query", 0, None, f"slept {seconds:g} s in the database")

    @router.post("/exhaust", response_model=ScenarioResult)
    def exhaust(request: Request, hold_s: HoldS = ttl) -> ScenarioResult:
        """Checks out every connection of the pool, so other requests wait pool_timeout and get 503 (breaks 'size the pool for the load')."""
        engine: Engine = request.app.state.engine

        def take() -> _Closeable:
            connection: Connection = engine.connect()
            return connection

        return _hold(request, "exhaust", take, capacity, capacity, hold_s)

    @router.post("/two-sessions", response_model=ScenarioResult)
    def two_sessions(request: Request) -> ScenarioResult:
        """Opens two sessions at once in one request and uses both (breaks 'one session per request')."""
        _ensure_schema(request)
        factory = _factory(request)
        with factory() as first, factory() as second:
            first.scalar(select(func.count()).select_from(Product))
            second.scalar(select(func.count()).select_from(Product))
        return _result(request, "two-sessions", 0, None, "two sessions used at once, both closed")

    @router.post("/release", response_model=ScenarioResult)
    def release(request: Request) -> ScenarioResult:
        """Closes every session and connection the demo scenarios hold."""
        released = _holdings(request).release_all()
        detail = f"released {released} connection(s)"
        return _result(request, "release", 0, None, detail, released=released)

    return router


# ---- helpers of the routes -------------------------------------------------------------------


def _holdings(request: Request) -> Holdings:
    holdings: Holdings = request.app.state.demo_holdings
    return holdings


def _factory(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


def _ensure_schema(request: Request) -> None:
    request.app.state.schema.ensure()


def _query_and_drop(factory: sessionmaker[Session]) -> None:
    session = factory()
    session.scalar(select(func.count()).select_from(Product))
    # Returning without close() is the bug this scenario shows.


def _full(holdings: Holdings, scenario: str) -> HTTPException:
    return HTTPException(
        status.HTTP_409_CONFLICT,
        f"the demo already holds or reserves {holdings.busy} connection(s), its limit for "
        f"{scenario}; POST /demo/release first",
    )


def _hold(
    request: Request,
    scenario: str,
    take: Callable[[], _Closeable],
    wanted: int,
    limit: int,
    hold_s: float,
) -> ScenarioResult:
    """Take up to `wanted` resources within `limit` held connections, and keep them for `hold_s`."""
    _ensure_schema(request)
    holdings = _holdings(request)
    granted = holdings.reserve(wanted, limit)
    if granted == 0:
        raise _full(holdings, scenario)
    taken: list[_Closeable] = []
    try:
        for _ in range(granted):
            taken.append(take())
    except sa_exc.TimeoutError:
        if not taken:  # the app's handler turns this into a 503
            holdings.cancel(granted)
            raise
        # Others hold the rest of the pool: keep what we got.
    except BaseException:
        holdings.cancel(granted)
        _close_all(taken)
        raise
    holdings.cancel(granted - len(taken))
    release_at = holdings.keep(scenario, taken, hold_s, len(taken))
    detail = f"holding {len(taken)} connection(s) for {hold_s:g} s"
    if len(taken) < wanted:
        detail += f" (asked for {wanted}, clamped)"
    return _result(request, scenario, len(taken), release_at, detail)


def _result(
    request: Request,
    scenario: str,
    held: int,
    release_at: datetime | None,
    detail: str,
    *,
    released: int = 0,
) -> ScenarioResult:
    return ScenarioResult(
        scenario=scenario,
        held=held,
        held_total=_holdings(request).held,
        release_at=release_at,
        released=released,
        detail=detail,
    )
