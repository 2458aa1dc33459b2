"""Statement timing: slow statements grouped by fingerprint; parameters are never looked at."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, event

from monitor.instrumentation.guard import FailureGuard
from monitor.sqltext import fingerprint, normalize
from monitor.state.holders import current_request
from monitor.state.tracker import PoolTracker

_STARTED = "_pool_monitor_started"


class StatementListeners:
    def __init__(self, tracker: PoolTracker) -> None:
        self._tracker = tracker
        self._guard = FailureGuard(tracker.listener_error)
        self._registered: list[tuple[str, Callable[..., Any]]] = []
        self._engine: Engine | None = None

    def attach(self, engine: Engine) -> None:
        self._engine = engine
        for name, listener in (
            ("before_cursor_execute", self._before),
            ("after_cursor_execute", self._after),
            ("handle_error", self._on_error),
        ):
            event.listen(engine, name, listener)
            self._registered.append((name, listener))

    def detach(self) -> None:
        if self._engine is not None:
            for name, listener in self._registered:
                event.remove(self._engine, name, listener)
        self._registered.clear()
        self._engine = None

    def _before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        context = args[1] if len(args) > 1 else None
        if context is not None:
            try:
                setattr(context, _STARTED, time.perf_counter())
            except Exception:
                self._guard.failed("before_cursor_execute")

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        context = args[1] if len(args) > 1 else None
        started = getattr(context, _STARTED, None)
        if started is None:
            return
        duration_s = time.perf_counter() - started
        if duration_s < self._tracker.slow_query_s:
            return
        try:
            self._record_slow(statement, duration_s)
        except Exception:
            self._guard.failed("after_cursor_execute")

    def _record_slow(self, statement: str, duration_s: float) -> None:
        request = current_request.get()
        route = f"{request.method} {request.route}" if request is not None else None
        self._tracker.slow_query(fingerprint(statement), normalize(statement), duration_s, route)

    def _on_error(self, exception_context: Any) -> None:
        try:
            self._tracker.statement_error()
            context = exception_context.execution_context
            started = getattr(context, _STARTED, None)
            statement = exception_context.statement
            if started is not None and statement:
                duration_s = time.perf_counter() - started
                # A statement cancelled by statement_timeout is the slowest kind of slow.
                if duration_s >= self._tracker.slow_query_s:
                    self._record_slow(statement, duration_s)
        except Exception:
            self._guard.failed("handle_error")
