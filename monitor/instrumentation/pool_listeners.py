"""The pool adapter: rare pool events through listeners, the hot path through wrappers.

Checkout and checkin happen on every request, and SQLAlchemy's event dispatch alone costs about
2 us per event there (measured: a no-op `checkout` listener adds 2.2 us to a 12 us cycle). So:
- `pool._do_get` is wrapped on the pool instance: the only place where waiting happens (no event
  exists for it), and where the checked-out record is known;
- each record's `checkin` is wrapped on the record instance, where SQLAlchemy still holds the
  weak reference to the checkout's proxy: dead means the garbage collector returned it;
- the pool's `_invoke_creator` (the DBAPI connect, for a new slot or a reconnect of an old one)
  is wrapped to note when connecting started; the `connect` listener times the creation from it;
- the pool's `recreate` (what `Engine.dispose()` calls, from any copy of the engine) is wrapped
  so that the pool it returns is wrapped too;
- connect, invalidate, soft_invalidate, close, detach and close_detached stay listeners.
The monitor's state of a record lives in an attribute of its own on the record, never in
`record_info` (the user's dict). Everything is reversible (`detach()`), and nothing here ever
raises into the application.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry, Pool

from monitor.instrumentation import attachments
from monitor.instrumentation.backend import backend_pid, socket_address
from monitor.instrumentation.guard import FailureGuard
from monitor.state.holders import current_request
from monitor.state.sites import SiteCapture
from monitor.state.tracker import PoolTracker, Slot

SLOT_ATTR = "_pool_monitor_slot"  # on the record once adopted; the checkout path reads it by name
BOOKS_ATTR = "_pool_monitor_books"  # on the record from the monitor's first sight of it


class RecordBooks:
    """What the monitor keeps about one connection record, beside SQLAlchemy's own state."""

    __slots__ = ("connect_counted", "connecting_since", "gc_pending", "slot")

    def __init__(self, slot: Slot) -> None:
        self.slot = slot
        # The current connection's connect reached the tracker (its pid was read, if it could).
        self.connect_counted = False
        # When the record's DBAPI connect started (tracker clock), until `connect` reads it.
        self.connecting_since: float | None = None
        # Set by the async-only reset listener when the garbage collector is cleaning up.
        self.gc_pending = False


# On a new record while it connects for a checkout: the pool counts it as checked out already.
CONNECTING_ATTR = "_pool_monitor_connecting"


class PoolListeners:
    def __init__(
        self, tracker: PoolTracker, capture: SiteCapture | None, *, is_async: bool = False
    ) -> None:
        self._tracker = tracker
        self._capture = capture
        # Async dialects detach a garbage-collected connection instead of checking it in; only
        # the `reset` event tells that apart, so it is listened to on async engines alone.
        self._is_async = is_async
        self._guard = FailureGuard(tracker.listener_error)
        self._registered: list[tuple[str, Callable[..., None]]] = []
        self._engine: Engine | None = None
        self._wrapped_pools: weakref.WeakSet[Pool] = weakref.WeakSet()
        self._wrapped_records: weakref.WeakSet[Any] = weakref.WeakSet()

    def attach(self, engine: Engine) -> None:
        attachments.before_attach(engine)
        self._engine = engine
        # `async_engine.sync_engine` passed as a plain Engine is still an async pool.
        self._is_async = self._is_async or bool(getattr(engine.dialect, "is_async", False))
        listeners: list[tuple[str, Callable[..., None]]] = [
            ("connect", self._on_connect),
            ("invalidate", self._on_invalidate),
            ("soft_invalidate", self._on_soft_invalidate),
            ("close", self._on_close),
            ("detach", self._on_detach),
            ("close_detached", self._on_close_detached),
        ]
        if self._is_async:
            listeners.append(("reset", self._on_reset))
        for name, listener in listeners:
            # asyncio=False: a listener of ours never turns the event's first-run mutex into an
            # asyncio lock; the dialect's own listeners decide that, as without the monitor.
            event.listen(engine, name, listener, asyncio=False)
            self._registered.append((name, listener))
        self._wrap_pool(engine.pool)
        attachments.attached(engine, self._tracker)

    def detach(self) -> None:
        if self._engine is None:
            return
        engine = self._engine
        for name, listener in self._registered:
            event.remove(self._engine, name, listener)
        self._registered.clear()
        for pool in list(self._wrapped_pools):
            pool.__dict__.pop("_do_get", None)
            pool.__dict__.pop("recreate", None)
            # `_invoke_creator` is SQLAlchemy's own instance attribute: put the original back.
            original = getattr(pool.__dict__.get("_invoke_creator"), "__wrapped__", None)
            if original is not None:
                pool._invoke_creator = original
        for record in list(self._wrapped_records):
            # A later monitor starts the record on fresh books.
            for name in ("checkin", SLOT_ATTR, BOOKS_ATTR):
                record.__dict__.pop(name, None)
        self._wrapped_pools = weakref.WeakSet()
        self._wrapped_records = weakref.WeakSet()
        self._engine = None
        attachments.detached(engine, self._tracker)

    # ---- the hot path: wrappers -------------------------------------------------------------

    def _wrap_pool(self, pool: Pool) -> None:
        """Shadow `_do_get` (waiting, checkout) and `_invoke_creator` (connecting) on the pool
        instance."""
        if pool in self._wrapped_pools:
            return
        tracker = self._tracker
        # The pool by a weak reference and its methods as functions: a bound method in a
        # wrapper stored on the pool is a reference cycle, and the pool `Engine.dispose()`
        # replaces would outlive it (still counted as a pool of the app) until the collector ran.
        pool_ref = weakref.ref(pool)
        do_get = _as_function(pool, "_do_get")
        invoke_creator = pool._invoke_creator
        clock = tracker.clock  # one clock for the wait and the checkout time
        checkout = tracker.checkout
        adopt = self._adopt
        request_in_flight = current_request.get
        running_loop = asyncio._get_running_loop  # None outside a loop, without raising
        current_task = asyncio.current_task
        thread_ident = threading.get_ident
        # `tuple()` is the empty site, made in C
        capture = self._capture.capture if self._capture is not None else tuple
        guard = self._guard
        books_of = self._books
        wrap_pool = self._wrap_pool
        recreate = _as_function(pool, "recreate")
        connecting = tracker.connecting

        # Every line here runs on every checkout: one frame, names bound in the closure.
        def _do_get() -> Any:
            started = clock()
            try:
                record: ConnectionPoolEntry = do_get(pool_ref())
            except BaseException as error:
                try:
                    timed_out = isinstance(error, sa_exc.TimeoutError)
                    request = request_in_flight()
                    tracker.wait_failed(
                        clock() - started,
                        timed_out=timed_out,
                        request=request,
                        task=None if request is not None else _task_or_thread(),
                        site=capture() if timed_out else (),
                    )
                except Exception:
                    guard.failed("wait")  # the app gets its own error, never ours
                raise
            now = clock()
            try:
                fresh = False
                try:
                    slot = record._pool_monitor_slot  # type: ignore[attr-defined]
                except AttributeError:
                    slot = adopt(record)
                    fresh = True
                request = request_in_flight()
                if request is not None and not request.finished:
                    holder = None
                else:
                    # The asyncio task (an async engine's greenlet runs inside it, and a sync
                    # engine may be called from one), else the thread (named only when shown).
                    # A task a request started that runs on after it is its own owner.
                    request = None
                    loop = running_loop()
                    holder = (current_task(loop) if loop is not None else None) or thread_ident()
                checkout(slot, request, holder, capture(), now - started, now)
                if fresh and record.__dict__.pop(CONNECTING_ATTR, False):
                    connecting.pop()  # its slot shows it now
            except Exception:
                guard.failed("checkout")
            return record

        # A new slot and a reconnect of an old one (after an invalidation, a recycle or a failed
        # pre-ping) both connect here; `_create_connection` would see new slots only.
        def _invoke_creator(rec: ConnectionPoolEntry) -> DBAPIConnection:
            counted = False
            try:
                books_of(rec).connecting_since = clock()
                # A record never checked out through us is new: the pool counts it as checked
                # out from before its connect (overflow taken), so the monitor does too.
                if SLOT_ATTR not in vars(rec):
                    connecting.append(None)
                    vars(rec)[CONNECTING_ATTR] = counted = True
            except Exception:
                guard.failed("create")
            try:
                return invoke_creator(rec)
            except BaseException:
                if counted and vars(rec).pop(CONNECTING_ATTR, False):
                    connecting.pop()
                raise

        # `Engine.dispose()` replaces the pool with this one's `recreate()`: on the engine, on an
        # `execution_options()` engine or a copy of it sharing the pool. Wrapping here, not the
        # engine's `dispose`, leaves each engine disposing its own pool.
        def _recreate() -> Pool:
            new_pool: Pool = recreate(pool_ref())
            try:
                wrap_pool(new_pool)
            except Exception:
                guard.failed("dispose")
            return new_pool

        _invoke_creator.__wrapped__ = invoke_creator  # type: ignore[attr-defined]
        pool._do_get = _do_get  # type: ignore[method-assign]
        pool._invoke_creator = _invoke_creator
        pool.recreate = _recreate  # type: ignore[method-assign]
        self._wrapped_pools.add(pool)

    def _adopt(self, record: Any) -> Slot:
        """First checkout of a record: wrap its `checkin`, and count its connection if no
        `connect` event was seen for it (connected before the monitor attached)."""
        books = self._books(record)
        slot = books.slot
        dbapi_connection = record.dbapi_connection
        if not books.connect_counted and dbapi_connection is not None:
            books.connect_counted = True
            self._tracker.connected(
                slot,
                backend_pid(dbapi_connection),
                None,
                address=socket_address(dbapi_connection),
            )
        tracker = self._tracker
        guard = self._guard
        # Weak references only: a closure holding the record would make a reference cycle
        # (record -> its checkin attribute -> closure -> record) and delay freeing it.
        record_ref = weakref.ref(record)
        class_checkin = type(record).checkin

        # The exact signature, not *args: argument packing would cost more than the rest.
        returning = tracker.returning

        def checkin(_fairy_was_created: bool = True) -> None:
            current = record_ref()
            if current is None:
                return
            # Counted as returning until the pool has it back (or closed it, for an overflow
            # connection): the pool counts it as checked out until then.
            counted = slot.holding is not None
            if counted:
                returning.append(None)
            try:
                proxy = current.fairy_ref
                tracker.checkin(slot, proxy is not None and proxy() is None)
            except Exception:
                guard.failed("checkin")
            try:
                class_checkin(current, _fairy_was_created)
            finally:
                if counted:
                    returning.pop()

        record.checkin = checkin
        # Also on the instance: the checkout path reads it as a plain attribute.
        record.__dict__[SLOT_ATTR] = slot
        self._wrapped_records.add(record)
        return slot

    # ---- the rare events: listeners ---------------------------------------------------------

    def _books(self, record: Any) -> RecordBooks:
        books: RecordBooks | None = record.__dict__.get(BOOKS_ATTR)
        if books is None:
            books = record.__dict__[BOOKS_ATTR] = RecordBooks(self._tracker.new_slot())
            self._wrapped_records.add(record)
        return books

    def _slot(self, record: Any) -> Slot:
        return self._books(record).slot

    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        try:
            books = self._books(record)
            books.gc_pending = False  # a new connection: no cleanup pending for it
            # From the driver's connect to here: the dialect's connect setup (it listens first;
            # on a pool's first connection it queries the server) is part of the creation.
            started, books.connecting_since = books.connecting_since, None
            create_s = self._tracker.clock() - started if started is not None else None
            books.connect_counted = True  # before the pid read: a failing read counts once too
            self._tracker.connected(
                books.slot,
                backend_pid(dbapi_connection),
                create_s,
                address=socket_address(dbapi_connection),
            )
        except Exception:
            self._guard.failed("connect")

    def _on_reset(self, dbapi_connection: Any, record: Any, reset_state: Any) -> None:
        # Only a garbage-collection cleanup resets without being allowed to touch the asyncio
        # connection: remember it for the `detach` that follows.
        if not reset_state.asyncio_safe:
            try:
                books = self._books(record)
                books.gc_pending = True
                self._tracker.reset(books.slot, terminated=reset_state.terminate_only)
            except Exception:
                self._guard.failed("reset")

    def _on_invalidate(self, dbapi_connection: Any, record: Any, exception: Any) -> None:
        self._invalidated(record, exception, soft=False)

    def _on_soft_invalidate(self, dbapi_connection: Any, record: Any, exception: Any) -> None:
        self._invalidated(record, exception, soft=True)

    def _invalidated(self, record: Any, exception: Any, *, soft: bool) -> None:
        try:
            # A cleanup whose reset failed ends in invalidation, not in the `detach` it marked for.
            self._books(record).gc_pending = False
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
            books = self._books(record)
            reclaimed, books.gc_pending = books.gc_pending, False
            self._tracker.detached(books.slot, reclaimed=reclaimed)
        except Exception:
            self._guard.failed("detach")

    def _on_close_detached(self, dbapi_connection: Any) -> None:
        # The slot already left the books at `detach`; only its orphan entry goes now.
        try:
            self._tracker.detached_closed(backend_pid(dbapi_connection))
        except Exception:
            self._guard.failed("close_detached")


def _task_or_thread() -> object:
    """The asyncio task running here, else the thread's ident."""
    loop = asyncio._get_running_loop()
    task = asyncio.current_task(loop) if loop is not None else None
    return task if task is not None else threading.get_ident()


def _as_function(pool: Pool, name: str) -> Callable[[Pool | None], Any]:
    """`pool.<name>` as a function taking the pool, holding no reference to it."""
    method = getattr(pool, name)
    if getattr(method, "__self__", None) is pool:
        function: Callable[[Pool | None], Any] = method.__func__
        return function
    return lambda _pool: method()  # an instance attribute already: called as it is
