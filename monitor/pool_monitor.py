"""`PoolMonitor`: the public entry point that attaches the monitor to an app and its engines."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import site
import sys
import sysconfig
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import sqlalchemy
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

from monitor.background import Background
from monitor.instrumentation.attribution import allow_long_hold
from monitor.instrumentation.pool_listeners import PoolListeners
from monitor.instrumentation.pool_stats import pool_checked_out, queue_waiters
from monitor.instrumentation.pools_seen import pools_observed, watch_pools
from monitor.instrumentation.statements import StatementListeners
from monitor.metrics.collector import MonitorCollector
from monitor.process_group import GroupMember, group_directory
from monitor.state.group import WorkerReport
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
from monitor.watched_pool import (
    PRIMARY,
    WatchedPool,
    default_pool_name,
    probe_key,
    server_states,
    unique_name,
)
from monitor.web.install import ROUTE_TAG, claim_metrics_path, install_monitor, warn_if_open

if TYPE_CHECKING:
    from fastapi import FastAPI
    from prometheus_client.registry import Collector
    from sqlalchemy.ext.asyncio import AsyncEngine  # needs greenlet: never imported at run time

log = logging.getLogger("monitor")


def _library_prefixes(extra: Sequence[str] = ()) -> tuple[str, ...]:
    """Frames from these directories are not 'the line of code that took the connection':
    wherever packages are installed (site-packages, dist-packages), the standard library, the
    monitor itself, and SQLAlchemy wherever it lives; `extra` adds the user's own."""
    # Resolving the directories takes about a millisecond: once per sys.path, not per engine
    # (a test suite creates hundreds of engines).
    return _prefixes_for(tuple(extra), tuple(sys.path))


@functools.lru_cache(maxsize=8)
def _prefixes_for(extra: tuple[str, ...], _search_path: tuple[str, ...]) -> tuple[str, ...]:
    here = Path(__file__).resolve().parent
    paths = sysconfig.get_paths()
    dirs = {
        str(Path(sqlalchemy.__file__).resolve().parent),
        str(here),
        *(paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")),
        *_install_dirs(),
    }
    # A directory matches below its separator only: /usr/lib/python3.11 is not /usr/lib/python3.11-app.
    prefixes = {_as_dir(d) for d in dirs if d} | set(extra)
    # "<": generated code, e.g. SQLAlchemy's "<sqlalchemy generated _go() wrapper ...>".
    return tuple(sorted({"<", *prefixes}))


def _as_dir(path: str) -> str:
    return path if path.endswith(os.sep) else path + os.sep


def _install_dirs() -> set[str]:
    """Every directory packages are installed into: site.getsitepackages() misses the
    virtualenv, the user's site and Debian's dist-packages on some interpreters."""
    dirs = set(getattr(site, "getsitepackages", list)())
    user_site = getattr(site, "getusersitepackages", lambda: None)()
    if isinstance(user_site, str):
        dirs.add(user_site)
    dirs.update(p for p in sys.path if Path(p).name in ("site-packages", "dist-packages"))
    # Both spellings: code objects carry the path as imported, which may be a symlink.
    return {str(Path(d).resolve()) for d in dirs if d} | {d for d in dirs if d}


def _app_prefixes(extra: Sequence[str] = ()) -> tuple[str, ...]:
    """Frames here are app code even inside a library directory: the bundled demo app (a wheel
    puts it in site-packages), and the user's own packages installed there."""
    demo = Path(__file__).resolve().parent / "demo"
    return tuple(sorted({_as_dir(str(demo)), *extra}))


def _parent_greenlet_frame() -> FrameType | None:
    """The suspended frame of the greenlet that called into SQLAlchemy's async bridge."""
    try:
        # Here, not at the top: greenlet comes with the async extra only (see AsyncEngine above).
        from greenlet import getcurrent
    except ImportError:
        return None
    parent = getcurrent().parent
    frame: FrameType | None = getattr(parent, "gr_frame", None) if parent is not None else None
    return frame


class PoolMonitor:
    """Watches SQLAlchemy engines (sync `Engine` or `AsyncEngine`): the one given here (the
    primary) and any added with `add_engine`. Listeners attach at once; the server probes (one per
    database URL) run while `start()`ed, or inside the app lifespan after `install(app)`."""

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
        role: str = PRIMARY,
        capture_sites: bool = True,
        probe: bool = True,
        dashboard_token: str | None = None,
        url_source: str = "engine",
        probe_url: URL | str | None = None,
        long_hold_ceiling_s: float | None = None,
        long_hold_routes: Mapping[str, float] | None = None,
        idle_in_transaction_min_s: float = 1.0,
        pgbouncer_url: URL | str | None = None,
        library_prefixes: Sequence[str] = (),
        app_prefixes: Sequence[str] = (),
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
        self.leak_threshold_s = float(leak_threshold_s)
        self.slow_query_s = float(slow_query_s)
        self.probe_interval_s = float(probe_interval_s)
        self.probe_timeout_s = float(probe_timeout_s)
        self.probe_enabled = probe
        self.dashboard_token = dashboard_token
        self.verdict_window_s = float(verdict_window_s)
        self._long_hold_ceiling_s = long_hold_ceiling_s
        self._long_hold_routes = long_hold_routes
        self._idle_in_transaction_min_s = float(idle_in_transaction_min_s)
        # Each pool gets its own captures (they remember the depths of their checkout paths).
        self._site_capture: Callable[[], SiteCapture | None] = (
            partial(
                SiteCapture,
                _library_prefixes(library_prefixes),
                _parent_greenlet_frame,
                app_prefixes=_app_prefixes(app_prefixes),
            )
            if capture_sites
            else lambda: None
        )
        self._health_by_url: dict[str, ServerHealth] = {}
        self._pools: list[WatchedPool] = []
        self._lock = threading.Lock()
        # PgBouncer's admin console (`pgbouncer` database), read on the probe's schedule.
        self.pgbouncer_url: URL | None = make_url(pgbouncer_url) if pgbouncer_url else None
        self.pgbouncer_health = PgBouncerHealth() if self.pgbouncer_url is not None else None
        self._background: Background | None = None
        # Set while started as one worker of several (uvicorn/gunicorn workers, MONITOR_GROUP_DIR).
        self._group_dir: Path | None = None
        self._host: PoolMonitor | None = None  # set when installed into an app that had one
        primary = self.add_engine(
            engine, pool_name=pool_name, role=role, url_source=url_source, probe_url=probe_url
        )
        # The primary pool's parts, as attributes: the one-engine API.
        self.engine = primary.engine
        self.is_async = primary.is_async
        self.pool_name = primary.name
        self.tracker = primary.tracker
        self.server_health = primary.server_health
        self.url_source = primary.url_source
        self.probe_url = primary.probe_url
        self._pool_listeners = primary.pool_listeners
        self._statement_listeners = primary.statement_listeners
        self.verdicts = primary.verdicts

    def add_engine(
        self,
        engine: Engine | AsyncEngine,
        *,
        pool_name: str | None = None,
        role: str = "replica",
        url_source: str = "engine",
        probe_url: URL | str | None = None,
    ) -> WatchedPool:
        """Watch one more engine (a read replica, a second database, an async twin) on the same
        dashboard, `/metrics` and snapshot. Its pool is named `pool_name`, else after its
        database and role; pools with one database URL share one server probe."""
        sync_engine, is_async = sync_engine_of(engine)
        with self._lock:
            if any(p.engine.pool is sync_engine.pool for p in self._pools):
                raise ValueError("this engine's pool is watched already")
            taken = {p.name for p in self._pools}
            if pool_name is not None and pool_name in taken:
                raise ValueError(f"pool_name {pool_name!r} is taken: every pool needs its own")
            name = pool_name or default_pool_name(sync_engine, role, taken)
            tracker = PoolTracker(
                name,
                leak_threshold_s=self.leak_threshold_s,
                slow_query_s=self.slow_query_s,
                waiters=partial(queue_waiters, sync_engine),
                long_hold_ceiling_s=self._long_hold_ceiling_s,
                long_hold_routes=self._long_hold_routes,
                idle_in_transaction_min_s=self._idle_in_transaction_min_s,
                pool_checked_out=partial(pool_checked_out, sync_engine),
            )
            # The probe connects on its own: by default to engine.url, unless the app keeps
            # libpq parameters (a socket directory, TLS files) outside the URL and passes them.
            url = make_url(probe_url) if probe_url is not None else sync_engine.url
            health = self._health_by_url.setdefault(probe_key(url), ServerHealth())
            watched = WatchedPool(
                name=name,
                role=role,
                engine=sync_engine,
                is_async=is_async,
                tracker=tracker,
                probe_url=url,
                url_source=url_source,
                server_health=health,
                pool_listeners=PoolListeners(tracker, self._site_capture(), is_async=is_async),
                statement_listeners=StatementListeners(tracker, self._site_capture()),
                # Rules fail while their condition held within this window, then clear.
                verdicts=VerdictWindow(self.verdict_window_s),
            )
            watched.pool_listeners.attach(sync_engine)
            watched.statement_listeners.attach(sync_engine)
            watch_pools(sync_engine.pool)
            self._pools.append(watched)
        self._join_group(watched)
        background = self._background
        if background is not None:
            background.restart()  # a new server to probe, a new tracker to sweep
        return watched

    @property
    def pools(self) -> tuple[WatchedPool, ...]:
        """Every watched pool, the primary first."""
        with self._lock:
            return tuple(self._pools)

    @staticmethod
    def long_hold(ceiling_s: float) -> Callable[[], Any]:
        """Route dependency: this route may hold a connection up to `ceiling_s`
        (`dependencies=[Depends(monitor.long_hold(120))]`)."""
        return allow_long_hold(ceiling_s)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the periodic leak sweep and (unless disabled) the server probes; as one worker
        of several, join the process group (one report per pool, one prober per database)."""
        if self._host is not None:
            return  # the app's first monitor probes and sweeps this one's pools
        if self._background is None:
            self._group_dir = group_directory()
            for watched in self.pools:
                self._join_group(watched)
            self._background = Background(self)
            self._background.start()

    def _join_group(self, watched: WatchedPool) -> None:
        if self._group_dir is None or watched.group is not None:
            return
        try:
            watched.group = GroupMember(self._group_dir, watched.name)
            watched.tracker.worker = watched.group.pid
        except OSError as exc:  # an unwritable directory: this worker shows itself only
            log.warning("worker group directory %s unusable: %s", self._group_dir, exc)

    @property
    def group(self) -> GroupMember | None:
        """The primary pool's place in the process group (None: one process, or not started)."""
        return self._pools[0].group if self._pools else None

    def stop(self) -> None:
        if self._background is not None:
            self._background.stop()
            self._background = None
        for watched in self.pools:
            group, watched.group = watched.group, None
            watched.tracker.worker = None
            if group is not None:
                try:
                    group.leave()  # its counts stay in the group's totals
                except OSError as exc:
                    log.warning("could not retire this worker's report: %s", exc)
        self._group_dir = None

    def detach(self) -> None:
        """Stop background work and remove every listener and wrapper from the engines."""
        self.stop()
        for watched in self.pools:
            watched.detach()
        if self._host is not None:
            self._host._forget(self.pools)

    def install(
        self,
        app: FastAPI,
        *,
        metrics_path: str | None = "/metrics",
        include_in_schema: bool = False,
        tags: Sequence[str] | None = None,
    ) -> None:
        """Attribution middleware, /monitor routes, `metrics_path` (None: no metrics route), and
        background work in the lifespan. Monitor routes carry `tags` (default "pool-monitor":
        apps that name operations after their first tag keep working) and stay out of the app's
        OpenAPI schema unless `include_in_schema`. A second monitor installed into the same app
        joins the first: its pools show on the same dashboard and `/metrics`."""
        host = getattr(app.state, "pool_monitor", None)
        if isinstance(host, PoolMonitor) and host is not self:
            host._join(self)
            return
        install_monitor(
            app,
            self,
            metrics_path=metrics_path,
            include_in_schema=include_in_schema,
            tags=list(tags) if tags is not None else [ROUTE_TAG],
        )
        original = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(inner_app: Any) -> AsyncIterator[Any]:
            claim_metrics_path(inner_app, metrics_path)  # routes the app added after install()
            warn_if_open(inner_app, self.dashboard_token)
            self.start()
            try:
                async with original(inner_app) as state:
                    yield state
            finally:
                self.stop()

        app.router.lifespan_context = _typed_lifespan(lifespan)

    def _join(self, guest: PoolMonitor) -> None:
        """Show `guest`'s pools here; this monitor's background work covers them."""
        guest.stop()
        guest._host = self
        with self._lock:
            taken = {p.name for p in self._pools}
            for watched in guest.pools:
                if watched.name in taken:
                    watched.name = watched.tracker.pool_name = unique_name(watched.name, taken)
                taken.add(watched.name)
                # One server, one probe: the guest's pools read this monitor's health of it.
                key = probe_key(watched.probe_url)
                watched.server_health = self._health_by_url.setdefault(key, watched.server_health)
                self._pools.append(watched)
        if self._background is not None:
            self._background.restart()

    def _forget(self, gone: Sequence[WatchedPool]) -> None:
        with self._lock:
            self._pools = [p for p in self._pools if p not in gone]

    # ---- readers -----------------------------------------------------------------------------

    def pool_stats(self) -> PoolStats:
        return self._pools[0].pool_stats()

    def pool_snapshot(self) -> PoolSnapshot:
        return self.tracker.snapshot(self.server_states())

    def pool(self, name: str | None = None) -> WatchedPool:
        """The pool called `name` (the primary when None); KeyError when there is none."""
        pools = self.pools
        if name is None:
            return pools[0]
        for watched in pools:
            if watched.name == name:
                return watched
        raise KeyError(name)

    def view(self, *, detail: bool = True, pool: str | None = None) -> MonitorView:
        """Pool and server joined, capacity and rule verdicts: what every reader shows, for one
        pool (the primary unless `pool` names another). `detail=False` leaves out histories,
        sites and record lists (enough for metrics)."""
        return self._view(self.pool(pool), self.pools, detail=detail)

    def views(self, *, detail: bool = True) -> tuple[MonitorView, ...]:
        """One view per watched pool, the primary first."""
        pools = self.pools
        return tuple(self._view(watched, pools, detail=detail) for watched in pools)

    def _view(
        self, watched: WatchedPool, pools: Sequence[WatchedPool], *, detail: bool
    ) -> MonitorView:
        health = watched.server_health.snapshot()
        pgbouncer = self.pgbouncer_health.snapshot() if self.pgbouncer_health else None
        pool = watched.tracker.snapshot(self._states(watched, health, pgbouncer), detail=detail)
        app = self._app_info(watched, pools)
        stats = watched.pool_stats()
        group = watched.group
        if group is not None:
            try:
                if group.last_published is None:
                    self._publish(watched)  # the group's counters come from published reports
                combined, stats, info = group.combine(group.report(pool, stats), detail=detail)
                view = build_view(
                    combined, stats, health, app, watched.verdicts, pgbouncer=pgbouncer
                )
                return dataclasses.replace(view, group=info)
            except OSError as exc:  # the shared directory failed: this worker's own view
                log.warning("worker group unreadable, showing this worker only: %s", exc)
        return build_view(pool, stats, health, app, watched.verdicts, pgbouncer=pgbouncer)

    def _app_info(self, watched: WatchedPool, pools: Sequence[WatchedPool]) -> AppInfo:
        url = watched.probe_url  # the full URL: sslmode and socket host live in its query
        host = url.host or ""
        return AppInfo(
            database=mask_url(url),
            url_source=watched.url_source,
            host_is_local=host in LOCAL_HOSTS or host.startswith("/") or "host" in url.query,
            sslmode=_sslmode(url.query.get("sslmode")),
            pools_observed=pools_observed(),
            pools_declared=1 + sum(1 for p in pools if p.role != PRIMARY),
            role=watched.role,
        )

    def publish(self) -> None:
        """Write this worker's report of every pool for the rest of the group, and fold in the
        reports of exited workers (the background publisher)."""
        for watched in self.pools:
            if watched.group is not None:
                self._publish(watched)
                watched.group.reap()

    def _publish(self, watched: WatchedPool) -> None:
        group = watched.group
        if group is None:
            return

        def take() -> WorkerReport:
            health = watched.server_health.snapshot()
            pgbouncer = self.pgbouncer_health.snapshot() if self.pgbouncer_health else None
            pool = watched.tracker.snapshot(self._states(watched, health, pgbouncer))
            stats = watched.pool_stats()
            # Its counts only: the verdict window follows what readers are shown.
            app = self._app_info(watched, self.pools)
            own = build_view(pool, stats, health, app, pgbouncer=pgbouncer)
            return group.report(pool, stats, len(own.phantoms), len(own.orphans))

        group.publish(take)

    def snapshot(self) -> dict[str, Any]:
        """The data of `/monitor/api/snapshot`: plain, JSON-serialisable. `pools` lists every
        pool's view, the primary first; the primary's view is also at the top level. Session
        lists are capped (`session_lists` states the cap and counts the rest by state)."""
        views = []
        for full in self.views():
            view, caps = capped_view(full)
            data: dict[str, Any] = to_dict(view)
            data["session_lists"] = caps
            data["server_visibility"] = visibility(view.server)
            views.append(data)
        result: dict[str, Any] = {**views[0], "pools": views}
        return result

    def collector(self) -> Collector:
        """A Prometheus collector of every pool, for an app that serves its own /metrics:
        `registry.register(monitor.collector())` (use with `install(app, metrics_path=None)`)."""
        return MonitorCollector(lambda: self)

    def server_states(self) -> dict[int, str | None] | None:
        """pid -> pg_stat_activity.state from the last successful probe (None when stale)."""
        return self.pool_server_states(self._pools[0])

    def pool_server_states(self, watched: WatchedPool) -> dict[int, str | None] | None:
        """pid -> state for one pool's connections (what its leak sweep classifies by)."""
        health = watched.server_health.snapshot()
        pgbouncer = self.pgbouncer_health.snapshot() if self.pgbouncer_health else None
        return self._states(watched, health, pgbouncer)

    def _states(
        self,
        watched: WatchedPool,
        health: ServerHealthSnapshot,
        pgbouncer: PgBouncerHealthSnapshot | None,
    ) -> dict[int, str | None] | None:
        states = server_states(health)
        info = pooler_info(health, pgbouncer)
        if states is None or not info.detected:
            return states
        # Behind a pooler the drivers' pids are PgBouncer's keys: translate through the join.
        connections = watched.tracker.snapshot(None, detail=False).connections
        return states_by_driver_pid(connections, info, pgbouncer, states)


def sync_engine_of(engine: Engine | AsyncEngine) -> tuple[Engine, bool]:
    """The sync `Engine` behind `engine` and whether it is an `AsyncEngine`, without importing
    `sqlalchemy.ext.asyncio` (it needs greenlet, which a sync-only install lacks)."""
    if isinstance(engine, Engine):
        return engine, False
    inner = getattr(engine, "sync_engine", None)
    if isinstance(inner, Engine):
        return inner, True
    raise TypeError(
        f"PoolMonitor needs a SQLAlchemy Engine or AsyncEngine, got {type(engine).__name__}"
    )


def _sslmode(value: object) -> str | None:
    if isinstance(value, tuple):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


def _typed_lifespan(
    factory: Callable[[Any], AbstractAsyncContextManager[Any]],
) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    return factory
