"""`PoolMonitor`: the public entry point that attaches the monitor to one engine and one app."""

from __future__ import annotations

import logging
import math
import os
import sysconfig
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from monitor.instrumentation.pool_listeners import PoolListeners
from monitor.instrumentation.pool_stats import pool_checked_out, queue_waiters, read_pool_stats
from monitor.instrumentation.pools_seen import pools_observed, watch_pools
from monitor.instrumentation.statements import StatementListeners
from monitor.state.pgbouncer import PgBouncerHealth, PgBouncerHealthSnapshot
from monitor.state.pooler import pooler_info, states_by_driver_pid
from monitor.state.records import PoolSnapshot, PoolStats, to_dict
from monitor.state.server import ServerHealth, ServerHealthSnapshot
from monitor.state.session_cap import capped_view
from monitor.state.sites import SiteCapture
from monitor.state.tracker import PoolTracker
from monitor.state.verdicts import VerdictWindow
from monitor.state.view import LOCAL_HOSTS, AppInfo, MonitorView, build_view
from monitor.state.visibility import visibility
from monitor.urls import mask_url

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("monitor")


def _library_prefixes() -> tuple[str, ...]:
    """Frames from these directories are not 'the line of code that took the connection'."""
    import sqlalchemy

    here = Path(__file__).resolve().parent
    prefixes = {
        "<",  # generated code, e.g. SQLAlchemy's "<sqlalchemy generated _go() wrapper ...>"
        str(Path(sqlalchemy.__file__).resolve().parent),
        str(here / "instrumentation"),
        str(here / "state"),
        sysconfig.get_paths()["stdlib"],
        sysconfig.get_paths()["purelib"] + os.sep + "starlette",
        sysconfig.get_paths()["purelib"] + os.sep + "fastapi",
        sysconfig.get_paths()["purelib"] + os.sep + "anyio",
    }
    return tuple(sorted(prefixes))


def _parent_greenlet_frame() -> FrameType | None:
    """The suspended frame of the greenlet that called into SQLAlchemy's async bridge."""
    try:
        from greenlet import getcurrent
    except ImportError:
        return None
    parent = getcurrent().parent
    frame: FrameType | None = getattr(parent, "gr_frame", None) if parent is not None else None
    return frame


class PoolMonitor:
    """Watches one SQLAlchemy engine (sync `Engine` or `AsyncEngine`); listeners attach at once,
    the server probe runs while `start()`ed (or inside the app lifespan after `install(app)`)."""

    def __init__(
        self,
        engine: Engine | AsyncEngine,
        *,
        leak_threshold_s: float = 10.0,
        slow_query_s: float = 0.5,
        probe_interval_s: float = 5.0,
        probe_timeout_s: float = 2.0,
        verdict_window_s: float = 900.0,
        pool_name: str | None = None,
        capture_sites: bool = True,
        probe: bool = True,
        dashboard_token: str | None = None,
        url_source: str = "engine",
        probe_url: URL | str | None = None,
        long_hold_ceiling_s: float | None = None,
        long_hold_routes: Mapping[str, float] | None = None,
        idle_in_transaction_min_s: float = 1.0,
        pgbouncer_url: URL | str | None = None,
    ) -> None:
        for name, value in (
            ("leak_threshold_s", leak_threshold_s),
            ("slow_query_s", slow_query_s),
            ("probe_interval_s", probe_interval_s),
            ("probe_timeout_s", probe_timeout_s),
            ("idle_in_transaction_min_s", idle_in_transaction_min_s),
            *((("long_hold_ceiling_s", long_hold_ceiling_s),) if long_hold_ceiling_s else ()),
            *(("long_hold_routes", ceiling) for ceiling in (long_hold_routes or {}).values()),
            ("verdict_window_s", verdict_window_s),
        ):
            if not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self.engine: Engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
        self.is_async = isinstance(engine, AsyncEngine)
        self.pool_name = pool_name or self.engine.pool.logging_name or "default"
        self.probe_interval_s = float(probe_interval_s)
        self.probe_timeout_s = float(probe_timeout_s)
        self.probe_enabled = probe
        self.dashboard_token = dashboard_token
        self.tracker = PoolTracker(
            self.pool_name,
            leak_threshold_s=float(leak_threshold_s),
            slow_query_s=float(slow_query_s),
            waiters=partial(queue_waiters, self.engine),
            long_hold_ceiling_s=long_hold_ceiling_s,
            long_hold_routes=long_hold_routes,
            idle_in_transaction_min_s=float(idle_in_transaction_min_s),
            pool_checked_out=partial(pool_checked_out, self.engine),
        )
        capture = (
            SiteCapture(_library_prefixes(), _parent_greenlet_frame) if capture_sites else None
        )
        self._pool_listeners = PoolListeners(self.tracker, capture, is_async=self.is_async)
        self._statement_listeners = StatementListeners(
            self.tracker,
            SiteCapture(_library_prefixes(), _parent_greenlet_frame) if capture_sites else None,
        )
        self._pool_listeners.attach(self.engine)
        self._statement_listeners.attach(self.engine)
        self.server_health = ServerHealth()
        # Rules fail while their condition held within this window, then clear by themselves.
        self.verdicts = VerdictWindow(float(verdict_window_s))
        self.url_source = url_source
        # The probe connects on its own: by default to engine.url, unless the app keeps libpq
        # parameters (a socket directory, TLS files) outside the URL and passes the full one.
        self.probe_url: URL = make_url(probe_url) if probe_url is not None else self.engine.url
        # PgBouncer's admin console (`pgbouncer` database), read on the probe's schedule.
        self.pgbouncer_url: URL | None = make_url(pgbouncer_url) if pgbouncer_url else None
        self.pgbouncer_health = PgBouncerHealth() if self.pgbouncer_url is not None else None
        watch_pools(self.engine.pool)
        self._attached = True
        self._background: Any = None

    @staticmethod
    def long_hold(ceiling_s: float) -> Callable[[], Any]:
        """Route dependency: this route may hold a connection up to `ceiling_s`
        (`dependencies=[Depends(monitor.long_hold(120))]`)."""
        from monitor.instrumentation.attribution import allow_long_hold

        return allow_long_hold(ceiling_s)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the periodic leak sweep and (unless disabled) the server probe."""
        from monitor.background import Background

        if self._background is None:
            self._background = Background(self)
            self._background.start()

    def stop(self) -> None:
        if self._background is not None:
            self._background.stop()
            self._background = None

    def detach(self) -> None:
        """Stop background work and remove every listener and wrapper from the engine."""
        self.stop()
        if self._attached:
            self._pool_listeners.detach()
            self._statement_listeners.detach()
            self._attached = False

    def install(self, app: FastAPI) -> None:
        """Attribution middleware, /monitor routes, /metrics, and background work in the lifespan."""
        from monitor.web.install import install_monitor

        install_monitor(app, self)
        original = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(inner_app: Any) -> AsyncIterator[Any]:
            self.start()
            try:
                async with original(inner_app) as state:
                    yield state
            finally:
                self.stop()

        app.router.lifespan_context = _typed_lifespan(lifespan)

    # ---- readers -----------------------------------------------------------------------------

    def pool_stats(self) -> PoolStats:
        return read_pool_stats(self.engine)

    def pool_snapshot(self) -> PoolSnapshot:
        return self.tracker.snapshot(self.server_states())

    def view(self, *, detail: bool = True) -> MonitorView:
        """Pool and server joined, capacity and rule verdicts: what every reader shows.
        `detail=False` leaves out histories, sites and record lists (enough for metrics)."""
        health = self.server_health.snapshot()
        pgbouncer = self.pgbouncer_health.snapshot() if self.pgbouncer_health else None
        pool = self.tracker.snapshot(self._states(health, pgbouncer), detail=detail)
        url = self.probe_url  # the full URL: sslmode and socket host live in its query
        host = url.host or ""
        app = AppInfo(
            database=mask_url(url),
            url_source=self.url_source,
            host_is_local=host in LOCAL_HOSTS or host.startswith("/") or "host" in url.query,
            sslmode=_sslmode(url.query.get("sslmode")),
            pools_observed=pools_observed(),
        )
        return build_view(pool, self.pool_stats(), health, app, self.verdicts, pgbouncer=pgbouncer)

    def snapshot(self) -> dict[str, Any]:
        """The data of `/monitor/api/snapshot`: plain, JSON-serialisable; session lists capped
        (`session_lists` states the cap and counts the rest by state)."""
        view, caps = capped_view(self.view())
        result: dict[str, Any] = to_dict(view)
        result["session_lists"] = caps
        result["server_visibility"] = visibility(view.server)
        return result

    def server_states(self) -> dict[int, str | None] | None:
        """pid -> pg_stat_activity.state from the last successful probe (None when stale)."""
        health = self.server_health.snapshot()
        return self._states(
            health, self.pgbouncer_health.snapshot() if self.pgbouncer_health else None
        )

    def _states(
        self, health: ServerHealthSnapshot, pgbouncer: PgBouncerHealthSnapshot | None
    ) -> dict[int, str | None] | None:
        states = _states(health)
        info = pooler_info(health, pgbouncer)
        if states is None or not info.detected:
            return states
        # Behind a pooler the drivers' pids are PgBouncer's keys: translate through the join.
        connections = self.tracker.snapshot(None, detail=False).connections
        return states_by_driver_pid(connections, info, pgbouncer, states)


def _states(health: ServerHealthSnapshot) -> dict[int, str | None] | None:
    if not health.up or health.last_sample is None:
        return None
    return {backend.pid: backend.state for backend in health.last_sample.backends}


def _sslmode(value: object) -> str | None:
    if isinstance(value, tuple):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


def _typed_lifespan(
    factory: Callable[[Any], AbstractAsyncContextManager[Any]],
) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    return factory
