"""Statement timing: slow statements grouped by fingerprint; parameters are never looked at.

Wraps the dialect's own `do_execute*` methods on the engine's dialect instance. Not through
events: connection-level listeners (`before/after_cursor_execute`) switch every `Connection` onto
SQLAlchemy's slower event path (about 9 us per checkout measured here), and even dialect-level
listeners cost an event dispatch per statement (about 0.7 us here, half the timing's cost).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from monitor.instrumentation.guard import FailureGuard
from monitor.sqltext import fingerprint, normalize
from monitor.state.holders import current_request
from monitor.state.sites import SiteCapture
from monitor.state.tracker import PoolTracker

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
        clock = time.perf_counter
        tracker = self._tracker
        slow = self._slow
        failed = self._failed

        # Each wrapper runs the dialect's own execute (driver behaviour unchanged) and times it;
        # the threshold check is inline: it runs on every statement.
        def timed(execute: Callable[..., None]) -> Callable[..., None]:
            def execute_timed(cursor: Any, statement: str, *parameters_and_context: Any) -> None:
                started = clock()
                try:
                    execute(cursor, statement, *parameters_and_context)
                except Exception:
                    failed()
                    raise
                finally:
                    duration_s = clock() - started
                    if duration_s >= tracker.slow_query_s:
                        slow(statement, duration_s)

            return execute_timed

        for name in EXECUTE_METHODS:
            # On the instance: shadows the class's method for this engine's dialect only.
            setattr(dialect, name, timed(getattr(dialect, name)))

    def detach(self) -> None:
        if self._dialect is not None:
            for name in EXECUTE_METHODS:
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
