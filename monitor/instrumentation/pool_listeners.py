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


def _task_name() -> str:
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    return task.get_name() if task is not None else threading.current_thread().name


class PoolListeners:
    """Translates SQLAlchemy pool events into tracker calls; attached to the Engine so they
    survive `engine.dispose()`, and removable with `detach()`."""

    def __init__(self, tracker: PoolTracker, capture: SiteCapture | None) -> None:
        self._tracker = tracker
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
            ("checkin", self._on_checkin),
            ("reset", self._on_reset),
            ("invalidate", self._on_invalidate),
            ("soft_invalidate", self._on_soft_invalidate),
            ("close", self._on_close),
            ("detach", self._on_detach),
            ("close_detached", self._on_close_detached),
            ("engine_disposed", self._on_engine_disposed),
        ):
            event.listen(engine, name, listener)
            self._registered.append((name, listener))
        self._wrap_pool(engine.pool)

    def detach(self) -> None:
        if self._engine is None:
            return
        for name, listener in self._registered:
            event.remove(self._engine, name, listener)
        self._registered.clear()
        for pool in list(self._wrapped_pools):
            pool.__dict__.pop("_do_get", None)
            pool.__dict__.pop("_create_connection", None)
        self._wrapped_pools = weakref.WeakSet()
        self._engine = None

    # ---- the acquire wrapper ------------------------------------------------------------------

    def _wrap_pool(self, pool: Pool) -> None:
        """Shadow the pool's `_do_get` on the instance: the only place where waiting happens."""
        if pool in self._wrapped_pools:
            return
        tracker = self._tracker
        do_get = pool._do_get
        create_connection = pool._create_connection
        clock = time.perf_counter

        def _do_get() -> Any:
            started = clock()
            tracker.waiting()
            try:
                record = do_get()
            except sa_exc.TimeoutError:
                tracker.done_waiting(clock() - started, timed_out=True)
                raise
            except BaseException:
                tracker.done_waiting(clock() - started, timed_out=False)
                raise
            tracker.done_waiting(clock() - started, timed_out=False)
            return record

        def _create_connection() -> Any:
            started = clock()
            record = create_connection()
            tracker.create_time.observe(clock() - started)
            return record

        pool._do_get = _do_get  # type: ignore[method-assign]
        pool._create_connection = _create_connection  # type: ignore[method-assign]
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
                None if request is not None else _task_name(),
                capture.capture(2) if capture is not None else (),
                weakref.ref(proxy),
            )
        except Exception:
            self._guard.failed("checkout")

    def _on_checkin(self, dbapi_connection: Any, record: Any) -> None:
        try:
            slot = record.record_info.get(SLOT_KEY)
            if slot is not None:
                self._tracker.checkin(slot)
        except Exception:
            self._guard.failed("checkin")

    def _on_reset(self, dbapi_connection: Any, record: Any, reset_state: Any) -> None:
        try:
            rolled_back = not (reset_state.transaction_was_reset or reset_state.terminate_only)
            if rolled_back:
                slot = record.record_info.get(SLOT_KEY)
                if slot is not None:
                    self._tracker.reset(slot, rolled_back=True)
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

    def _on_engine_disposed(self, engine: Engine) -> None:
        try:
            self._wrap_pool(engine.pool)  # dispose() swapped in a fresh pool
        except Exception:
            self._guard.failed("engine_disposed")
