"""The server probe: one dedicated connection, bounded in time, at most one probe in flight.

It never borrows from the application's pool, so an exhausted pool or a locked table cannot
blind it; every failure is recorded in `ServerHealth`, never raised.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from monitor.privileges import missing_privilege
from monitor.probes.activity import fetch_activity
from monitor.probes.settings import fetch_settings
from monitor.socket_deadline import SocketDeadline
from monitor.state.server import ServerHealth, ServerSample, ServerSettings, short_error
from monitor.urls import hide_dsn_in_pool_logs, probe_psycopg2_url

log = logging.getLogger(__name__)

SETTINGS_REFRESH_S = 60.0
# libpq reads connect_timeout in whole seconds and treats anything below 2 as 2.
MIN_CONNECT_TIMEOUT_S = 2


class ServerProbe:
    """Samples pg_stat_activity and pg_settings on its own connection into a ServerHealth."""

    def __init__(
        self,
        url: str | URL,
        health: ServerHealth,
        *,
        timeout_s: float = 2.0,
        application_name: str = "pool-monitor-probe",
        settings_refresh_s: float = SETTINGS_REFRESH_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.health = health
        self.timeout_s = timeout_s
        self.application_name = application_name
        # The server gives up first (statement, lock), the client-side deadline is the backstop.
        self.statement_timeout_ms = max(1, round(timeout_s * 250))
        self.lock_timeout_ms = max(1, round(timeout_s * 100))
        self._settings_refresh_s = settings_refresh_s
        self._clock = clock
        self._monotonic = monotonic
        self._in_flight = threading.Lock()
        self._closed = False
        self._connects = 0
        self._last_attempt_reused = False
        self._last_up: bool | None = None
        self._deadline: SocketDeadline | None = None
        self._settings: ServerSettings | None = None
        self._settings_read_at = 0.0
        probe_url, dropped = probe_psycopg2_url(url)
        if dropped:
            # Names only: a value may be a secret (sslpassword is kept, never logged).
            log.warning(
                "the probe (psycopg2) ignores URL parameters of the app's driver: %s",
                ", ".join(dropped),
            )
        self._engine = create_engine(
            probe_url,
            pool_size=1,
            max_overflow=0,
            pool_timeout=timeout_s,
            pool_reset_on_return="rollback",
            hide_parameters=True,
            connect_args=self._connect_args(),
        )
        event.listen(self._engine, "connect", self._on_connect)
        hide_dsn_in_pool_logs(self._engine)

    @property
    def engine(self) -> Engine:
        """The probe's private engine (diagnostics and tests; never the application's)."""
        return self._engine

    def run_once(self) -> None:
        """Probe the server once and record the outcome; skips if a probe is still running."""
        if self._closed:
            return
        if not self._in_flight.acquire(blocking=False):
            self.health.record_skipped()
            return
        try:
            if not self._closed:
                self._run()
        except Exception:  # a bug here must not kill the scheduler thread
            log.exception("server probe crashed")
        finally:
            self._in_flight.release()

    def record_skipped(self) -> None:
        """Count a tick the scheduler dropped because the previous probe was still running."""
        self.health.record_skipped()

    def close(self) -> None:
        """Stop probing and close the connection (waits briefly for a probe in flight)."""
        self._closed = True
        acquired = self._in_flight.acquire(timeout=self.timeout_s + MIN_CONNECT_TIMEOUT_S + 1)
        try:
            self._engine.dispose()
        finally:
            if acquired:
                self._in_flight.release()

    def _connect_args(self) -> dict[str, Any]:
        idle_s = max(1, math.ceil(self.timeout_s))
        return {
            "application_name": self.application_name,
            "connect_timeout": max(MIN_CONNECT_TIMEOUT_S, math.ceil(self.timeout_s)),
            # A peer that vanished is noticed by TCP too (ignored on Unix sockets).
            "keepalives": 1,
            "keepalives_idle": idle_s,
            "keepalives_interval": 1,
            "keepalives_count": 2,
            "tcp_user_timeout": round(self.timeout_s * 1000),
        }

    def _on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        self._connects += 1
        if self._deadline is not None:
            self._deadline.attach(dbapi_connection)

    def _run(self) -> None:
        started = self._monotonic()
        taken_at = self._clock()
        deadline = self._deadline = SocketDeadline(self.timeout_s)
        try:
            try:
                sample = self._attempt(started, taken_at, deadline)
            except DBAPIError as exc:
                # A pooled connection the server dropped (restart, idle_session_timeout) says
                # nothing about the server now: try once on a fresh connection.
                reused_dead = exc.connection_invalidated and self._last_attempt_reused
                in_time = self._monotonic() - started < self.timeout_s / 2
                if not (reused_dead and in_time and not deadline.fired):
                    raise
                sample = self._attempt(started, taken_at, deadline)
        except Exception as exc:
            duration_s = self._monotonic() - started
            error = describe_error(exc)
            self.health.record_failure(error, duration_s)
            # Log the transition once, not every tick of an outage.
            if self._last_up is not False:
                privilege = missing_privilege(exc)
                if privilege is not None:
                    log.warning("the probe's role lacks %s: %s", privilege, error)
                else:
                    log.warning(
                        "database unreachable for the probe (%.3f s): %s", duration_s, error
                    )
            self._last_up = False
            return
        finally:
            deadline.close()
            self._deadline = None
        self.health.record_success(sample)
        if self._last_up is False:
            log.info("database reachable again for the probe")
        self._last_up = True

    def _attempt(self, started: float, taken_at: float, deadline: SocketDeadline) -> ServerSample:
        connects_before = self._connects
        self._last_attempt_reused = False
        with self._engine.connect() as conn:
            fresh = self._connects != connects_before
            self._last_attempt_reused = not fresh
            if not fresh:  # a new connection was attached by the connect event already
                deadline.attach(conn.connection.dbapi_connection)
            try:
                # Transaction-scoped: a pooler (PgBouncer in transaction mode) hands the server
                # session to the app next, and a session-level SET would go with it.
                conn.exec_driver_sql(
                    probe_timeouts_sql(self.statement_timeout_ms, self.lock_timeout_ms)
                )
                settings = self._current_settings(conn, fresh)
                activity = fetch_activity(conn)
                conn.rollback()
                client_pid = driver_backend_pid(conn.connection.dbapi_connection)
            except BaseException:
                conn.invalidate()  # whatever went wrong, the next probe starts on a new session
                raise
        via_pooler = client_pid is not None and client_pid != activity.probe_pid
        if via_pooler:
            # Through a pooler in session mode a kept connection would hold one of its server
            # slots for good: connect per probe instead (bench/probe_connect.py: its cost).
            self._engine.pool.dispose()
        return ServerSample(
            taken_at=taken_at,
            duration_s=self._monotonic() - started,
            database=activity.database,
            backends=activity.backends,
            total_client_sessions=activity.total_client_sessions,
            settings=settings,
            via_pooler=via_pooler,
        )

    def _current_settings(self, conn: Connection, fresh_connection: bool) -> ServerSettings:
        now = self._monotonic()
        stale = now - self._settings_read_at >= self._settings_refresh_s
        # A new connection may mean a restarted server with a new configuration.
        if self._settings is None or stale or fresh_connection:
            self._settings = fetch_settings(conn)
            self._settings_read_at = now
        return self._settings


def driver_backend_pid(dbapi_connection: Any) -> int | None:
    """The pid the driver got at login: PgBouncer sends its own random key here, not the server's."""
    info = getattr(dbapi_connection, "info", None)
    pid = getattr(info, "backend_pid", None)
    return pid if isinstance(pid, int) else None


def probe_timeouts_sql(statement_timeout_ms: int, lock_timeout_ms: int) -> str:
    """The probe's timeouts for its current transaction only (they end with its rollback)."""
    return (
        f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}; "
        f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"
    )


def describe_error(exc: BaseException) -> str:
    """A short, secret-free description: the driver's first line, without SQL or URLs."""
    original = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    message = str(original).split(" (Background on this error at:", 1)[0]
    message = message.split("[SQL:", 1)[0]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    kind = type(original).__name__
    privilege = missing_privilege(exc)
    if privilege is not None:  # first: the message may be cut at its end
        kind = f"{kind} (the probe's role needs {privilege})"
    return short_error(f"{kind}: {first}" if first else kind)
