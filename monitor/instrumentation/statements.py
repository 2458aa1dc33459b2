"""Statement timing: slow statements grouped by fingerprint; parameters are never looked at.
Each statement, and each fetch from a server-side cursor, also marks its pool slot in use (a
hold that keeps working is not a leak).

Wraps the dialect's own `do_execute*` methods on the engine's dialect instance. Not through
events: connection-level listeners (`before/after_cursor_execute`) switch every `Connection` onto
SQLAlchemy's slower event path (about 9 us per checkout measured here), and even dialect-level
listeners cost an event dispatch per statement (about 0.7 us here, half the timing's cost).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from monitor.instrumentation.guard import FailureGuard
from monitor.sqltext import fingerprint, normalize
from monitor.state.holders import current_request
from monitor.state.sites import SiteCapture
from monitor.state.tracker import IN_USE, PoolTracker

EXECUTE_METHODS = ("do_execute", "do_execute_no_params", "do_executemany")


class StatementListeners:
    def __init__(self, tracker: PoolTracker, capture: SiteCapture | None = None) -> None:
        """`capture`: finds the app line that ran a slow statement (its own instance: the
        checkout's remembers the checkout path's depths)."""
        self._tracker = tracker
        self._capture = capture
        self._guard = FailureGuard(tracker.listener_error)
        self._dialect: Any = None

    def attach(self, engine: Engine) -> None:
        dialect: Any = engine.dialect
        self._dialect = dialect
        # The tracker's clock (monotonic): one reading times the statement and marks its use.
        clock = self._tracker.clock
        tracker = self._tracker
        slow = self._slow
        failed = self._failed

        # Each wrapper runs the dialect's own execute (driver behaviour unchanged) and times it;
        # the threshold check is inline: it runs on every statement.
        def timed(execute: Callable[..., None]) -> Callable[..., None]:
            def execute_timed(cursor: Any, statement: str, *parameters_and_context: Any) -> None:
                try:
                    # The execution context (last argument) -> pool proxy -> record -> slot.
                    slot = parameters_and_context[
                        -1
                    ]._dbapi_connection._connection_record._pool_monitor_slot
                    slot.used_at = IN_USE
                except Exception:
                    slot = None  # no context (or not a pool connection): timed only
                started = clock()
                try:
                    execute(cursor, statement, *parameters_and_context)
                except Exception:
                    failed()
                    raise
                finally:
                    ended = clock()
                    if slot is not None:
                        slot.used_at = ended
                    duration_s = ended - started
                    if duration_s >= tracker.slow_query_s:
                        slow(statement, duration_s)

            return execute_timed

        for name in EXECUTE_METHODS:
            # On the instance: shadows the class's method for this engine's dialect only.
            setattr(dialect, name, timed(getattr(dialect, name)))
        dialect.execution_ctx_cls = _marking_server_side_cursors(dialect.execution_ctx_cls, clock)

    def detach(self) -> None:
        if self._dialect is not None:
            for name in (*EXECUTE_METHODS, "execution_ctx_cls"):
                vars(self._dialect).pop(name, None)
        self._dialect = None

    def _slow(self, statement: str, duration_s: float) -> None:
        try:
            request = current_request.get()
            route = f"{request.method} {request.route}" if request is not None else None
            # Only slow statements pay for the walk (skip 2: this method, the timing wrapper).
            site = self._capture.capture(3) if self._capture is not None else ()
            self._tracker.slow_query(
                fingerprint(statement), normalize(statement), duration_s, route, site
            )
        except Exception:
            self._guard.failed("statement timing")

    def _failed(self) -> None:
        try:
            self._tracker.statement_error()
        except Exception:
            self._guard.failed("statement error")


def _marking_server_side_cursors(context_cls: Any, clock: Callable[[], float]) -> Any:
    """The dialect's execution context, with server-side cursors that mark their slot in use on
    every fetch: rows streamed from one (FETCH on the server) run no statement through the
    dialect, yet the connection is working."""

    class MarkingContext(context_cls):  # type: ignore[misc]
        def create_server_side_cursor(self) -> Any:
            cursor = super().create_server_side_cursor()
            try:
                slot = self._dbapi_connection._connection_record._pool_monitor_slot
            except Exception:
                return cursor
            return UseMarkingCursor(cursor, slot, clock)

    MarkingContext.__name__ = MarkingContext.__qualname__ = context_cls.__name__
    return MarkingContext


class UseMarkingCursor:
    """A DBAPI cursor whose fetches mark the pool slot in use; everything else passes through."""

    __slots__ = ("_clock", "_cursor", "_slot")

    def __init__(self, cursor: Any, slot: Any, clock: Callable[[], float]) -> None:
        object.__setattr__(self, "_cursor", cursor)
        object.__setattr__(self, "_slot", slot)
        object.__setattr__(self, "_clock", clock)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._cursor, name, value)

    def __iter__(self) -> Any:
        return iter(self._cursor)

    def _fetch(self, method: str, *args: Any) -> Any:
        slot = self._slot
        slot.used_at = IN_USE
        try:
            return getattr(self._cursor, method)(*args)
        finally:
            slot.used_at = self._clock()

    def fetchone(self) -> Any:
        return self._fetch("fetchone")

    def fetchmany(self, *size: Any) -> Any:
        return self._fetch("fetchmany", *size)

    def fetchall(self) -> Any:
        return self._fetch("fetchall")
