"""Listeners for every pool event, plus the acquire wrapper that measures waiting (no event exists)."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import Pool

from monitor.instrumentation.backend import backend_pid
from monitor.instrumentation.guard import FailureGuard
from monitor.state.holders import current_request
from monitor.state.sites import SiteCapture
from monitor.state.tracker import PoolTracker, Slot

SLOT_KEY = "pool_monitor.slot"


def _current_task() -> object:
    """The asyncio task or thread taking the connection; its name is read only when shown."""
    loop = asyncio._get_running_loop()  # None outside a loop, without raising (unlike current_task)
    if loop is not None:
        task = asyncio.current_task(loop)
        if task is not None:
            return task
    return threading.current_thread()


class PoolListeners:
    """Translates SQLAlchemy pool events into tracker calls; attached to the Engine so they
    survive `engine.dispose()`, and removable with `detach()`."""

    def __init__(
        self, tracker: PoolTracker, capture: SiteCapture | None, *, trace_resets: bool = False
    ) -> None:
        self._tracker = tracker
        # `reset` fires on every return and SQLAlchemy builds a PoolResetState per call: about
        # 2.5 us a cycle measured here, for a history line; so it is opt-in.
        self._trace_resets = trace_resets
        self._capture = capture
        self._guard = FailureGuard(tracker.listener_error)
        self._registered: list[tuple[str, Callable[..., None]]] = []
        self._engine: Engine | None = None
        self._wrapped_pools: weakref.WeakSet[Pool] = weakref.WeakSet()

    def attach(self, engine: Engine) -> None:
        self._engine = engine
        for name, listener in (
            ("connect", self._on_connect),
            ("checkout", self._on_checkout),
            ("invalidate", self._on_invalidate),
            ("soft_invalidate", self._on_soft_invalidate),
            ("close", self._on_close),
            ("detach", self._on_detach),
            ("close_detached", self._on_close_detached),
        ):
            event.listen(engine, name, listener)
            self._registered.append((name, listener))
        if self._trace_resets:
            event.listen(engine, "reset", self._on_reset)
            self._registered.append(("reset", self._on_reset))
        self._wrap_pool(engine.pool)
        self._wrap_dispose(engine)

    def detach(self) -> None:
        if self._engine is None:
            return
        for name, listener in self._registered:
            event.remove(self._engine, name, listener)
        self._registered.clear()
        self._engine.__dict__.pop("dispose", None)
        for pool in list(self._wrapped_pools):
            for name in ("_do_get", "_create_connection", "_return_conn"):
                pool.__dict__.pop(name, None)
        self._wrapped_pools = weakref.WeakSet()
        self._engine = None

    # ---- the acquire wrapper ------------------------------------------------------------------

    def _wrap_pool(self, pool: Pool) -> None:
        """Shadow three pool methods on the instance: waiting happens only in `_do_get` (no event
        exists for it), and `_return_conn` sees every checkin without the cost of an event."""
        if pool in self._wrapped_pools:
            return
        tracker = self._tracker
        do_get = pool._do_get
        create_connection = pool._create_connection
        return_conn = pool._return_conn
        clock = time.perf_counter
        waiting = tracker.pending_list
        observe_wait = tracker.wait_time.observe
        checkin = tracker.checkin
        guard = self._guard

        def _do_get() -> Any:
            started = clock()
            waiting.append(None)
            try:
                record = do_get()
            except sa_exc.TimeoutError:
                tracker.done_waiting(clock() - started, timed_out=True)
                raise
            except BaseException:
                tracker.done_waiting(clock() - started, timed_out=False)
                raise
            waiting.pop()
            observe_wait(clock() - started)
            return record

        def _create_connection() -> Any:
            started = clock()
            record = create_connection()
            tracker.create_time.observe(clock() - started)
            return record

        def _return_conn(record: Any) -> None:
            # Before the record is back in the queue: once there, another thread may take it.
            try:
                slot = record.record_info.get(SLOT_KEY)
                if slot is not None:
                    checkin(slot)
            except Exception:
                guard.failed("checkin")
            return_conn(record)

        pool._do_get = _do_get  # type: ignore[method-assign]
        pool._create_connection = _create_connection  # type: ignore[method-assign]
        pool._return_conn = _return_conn  # type: ignore[method-assign]
        self._wrapped_pools.add(pool)

    # ---- listeners ----------------------------------------------------------------------------

    def _slot(self, record: Any) -> Slot:
        info = record.record_info
        slot: Slot | None = info.get(SLOT_KEY)
        if slot is None:
            slot = info[SLOT_KEY] = self._tracker.new_slot()
        return slot

    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        try:
            self._tracker.connected(self._slot(record), backend_pid(dbapi_connection), None)
        except Exception:
            self._guard.failed("connect")

    def _on_checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        try:
            info = record.record_info
            slot = info.get(SLOT_KEY)
            if slot is None:  # checked in before the monitor attached
                slot = self._slot(record)
                self._tracker.connected(slot, backend_pid(dbapi_connection), None)
            request = current_request.get()
            capture = self._capture
            self._tracker.checkout(
                slot,
                request,
                None if request is not None else _current_task(),
                capture.capture(2) if capture is not None else (),
                weakref.ref(proxy),
            )
        except Exception:
            self._guard.failed("checkout")

    def _on_reset(self, dbapi_connection: Any, record: Any, reset_state: Any) -> None:
        # Fires on every return; only the unusual resets (terminate instead of rollback, e.g. a
        # connection the garbage collector reclaimed on an async dialect) are worth a history line.
        if reset_state.terminate_only:
            try:
                slot = record.record_info.get(SLOT_KEY)
                if slot is not None:
                    self._tracker.reset(slot, terminated=True)
            except Exception:
                self._guard.failed("reset")

    def _on_invalidate(self, dbapi_connection: Any, record: Any, exception: Any) -> None:
        self._invalidated(record, exception, soft=False)

    def _on_soft_invalidate(self, dbapi_connection: Any, record: Any, exception: Any) -> None:
        self._invalidated(record, exception, soft=True)

    def _invalidated(self, record: Any, exception: Any, *, soft: bool) -> None:
        try:
            reason = type(exception).__name__ if exception is not None else "explicit"
            self._tracker.invalidated(self._slot(record), soft=soft, reason=reason)
        except Exception:
            self._guard.failed("invalidate")

    def _on_close(self, dbapi_connection: Any, record: Any) -> None:
        try:
            self._tracker.closed(self._slot(record))
        except Exception:
            self._guard.failed("close")

    def _on_detach(self, dbapi_connection: Any, record: Any) -> None:
        try:
            self._tracker.detached(self._slot(record))
        except Exception:
            self._guard.failed("detach")

    def _on_close_detached(self, dbapi_connection: Any) -> None:
        pass  # the slot already left the books at `detach`

    def _wrap_dispose(self, engine: Engine) -> None:
        """`dispose()` swaps in a fresh pool: wrap that one too. Not via the `engine_disposed`
        event: any engine-level listener moves every Connection onto SQLAlchemy's slow path."""
        dispose = engine.dispose

        def _dispose(close: bool = True) -> None:
            dispose(close)
            try:
                self._wrap_pool(engine.pool)
            except Exception:
                self._guard.failed("dispose")

        engine.dispose = _dispose  # type: ignore[method-assign]
