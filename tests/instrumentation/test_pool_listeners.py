"""Pool listeners on a real PostgreSQL pool: the books stay right whatever the app does."""

from __future__ import annotations

import gc
import json
import random
import threading
import time
import weakref

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy import exc as sa_exc

from monitor.pool_monitor import PoolMonitor
from monitor.state.records import to_dict
from monitor.state.tracker import PoolTracker


def test_held_connection_is_tracked_with_its_pid_and_site(
    engine: Engine, monitor: PoolMonitor
) -> None:
    with engine.connect() as conn:
        pid = conn.scalar(text("SELECT pg_backend_pid()"))  # the checkout site is the line above
        snapshot = monitor.pool_snapshot()
        (view,) = [c for c in snapshot.connections if c.checked_out]
        assert view.pid == pid
        assert view.holder is not None and view.holder.kind == "task"
        assert view.site[0].filename == __file__
        assert "engine.connect()" in view.site[0].source
        assert snapshot.checked_out == 1 == monitor.pool_stats().checked_out
    assert monitor.pool_snapshot().checked_out == 0


def test_leak_is_flagged_after_threshold_and_resolved_on_return(
    engine: Engine, monitor: PoolMonitor
) -> None:
    conn = engine.connect()
    conn.execute(text("SELECT 1"))
    assert monitor.tracker.sweep() == []
    time.sleep(0.3)
    (leak,) = monitor.tracker.sweep()
    assert leak.held_for_s >= 0.2 and leak.site[0].filename == __file__
    conn.close()
    snapshot = monitor.pool_snapshot()
    assert snapshot.leaks == ()
    assert snapshot.resolved_leaks[0].how_resolved == "returned"
    assert snapshot.counters.leaks_by_class["unknown"] == 1


def _leak_a_connection(engine: Engine) -> None:
    conn = engine.connect()
    conn.execute(text("SELECT 1"))
    # returns without close(): the sync pool will take the connection back when it is collected


@pytest.mark.pool_monitor_allow(
    reason="drops a connection for the garbage collector: the count under test",
    kinds="gc_reclaimed",
)
def test_garbage_collected_connection_is_counted_with_its_site(
    engine: Engine, monitor: PoolMonitor
) -> None:
    _leak_a_connection(engine)
    gc.collect()
    snapshot = monitor.pool_snapshot()
    assert snapshot.counters.gc_reclaimed == 1
    assert snapshot.checked_out == 0 == engine.pool.checkedout()  # type: ignore[attr-defined]
    assert snapshot.gc_reclaims[0].site[0].function == "_leak_a_connection"
    assert snapshot.counters.listener_errors == 0


@pytest.mark.pool_monitor_allow(
    reason="drops an invalidated connection for the garbage collector", kinds="gc_reclaimed"
)
def test_invalidate_then_gc_keeps_the_books(engine: Engine, monitor: PoolMonitor) -> None:
    def invalidate_and_drop() -> None:
        conn = engine.connect()
        conn.connection._connection_record.invalidate()  # type: ignore[union-attr]

    invalidate_and_drop()
    gc.collect()
    snapshot = monitor.pool_snapshot()
    assert snapshot.counters.invalidations_hard == 1
    assert snapshot.checked_out == 0 == engine.pool.checkedout()  # type: ignore[attr-defined]
    assert snapshot.counters.listener_errors == 0
    with engine.connect() as conn:  # the slot reconnects and works
        assert conn.scalar(text("SELECT 1")) == 1


def test_create_time_counts_reconnects_of_an_existing_slot(
    engine: Engine, monitor: PoolMonitor
) -> None:
    with engine.connect() as conn:
        conn.connection._connection_record.invalidate()  # type: ignore[union-attr]
    with engine.connect() as conn:  # the same slot connects again
        assert conn.scalar(text("SELECT 1")) == 1
    snapshot = monitor.pool_snapshot()
    assert snapshot.counters.connects == 2 and len(snapshot.connections) == 1
    assert snapshot.create_time.count == 2
    # Each creation took a real connect (well above zero, well below the test's patience).
    assert 0 < snapshot.create_time.sum < 10
    assert snapshot.counters.listener_errors == 0


@pytest.mark.pool_monitor_allow(
    reason="holds the whole pool: the timeout under test", kinds="pool_timeout"
)
def test_pool_timeout_is_counted_with_the_holders(engine: Engine, monitor: PoolMonitor) -> None:
    held = [engine.connect() for _ in range(4)]  # pool_size 3 + overflow 1
    try:
        started = time.monotonic()
        with pytest.raises(sa_exc.TimeoutError):
            engine.connect()
        assert time.monotonic() - started >= 0.5
        snapshot = monitor.pool_snapshot()
        assert snapshot.counters.timeouts == 1
        (record,) = snapshot.timeouts
        assert len(record.holders) == 4 and record.waited_s >= 0.5
        assert all(view.site and view.site[0].filename == __file__ for view in record.holders)
    finally:
        for conn in held:
            conn.close()


def test_pending_requests_visible_while_threads_wait(engine: Engine, monitor: PoolMonitor) -> None:
    held = [engine.connect() for _ in range(4)]
    waiters = [threading.Thread(target=lambda: engine.connect().close()) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    try:
        deadline = time.monotonic() + 30
        while monitor.pool_snapshot().pending_requests < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert monitor.pool_snapshot().pending_requests == 3
    finally:
        for conn in held:
            conn.close()
        for waiter in waiters:
            waiter.join(timeout=5)
    snapshot = monitor.pool_snapshot()
    assert snapshot.pending_requests == 0
    assert snapshot.wait_time.count >= 7


def test_many_threads_with_invalidate_and_detach_end_balanced(
    engine: Engine, monitor: PoolMonitor
) -> None:
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(150):
                try:
                    conn = engine.connect()
                except sa_exc.TimeoutError:
                    continue
                roll = rng.random()
                if roll < 0.03:
                    conn.invalidate()
                elif roll < 0.06:
                    conn.detach()
                conn.close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    engine.pool._timeout = 5  # type: ignore[attr-defined]
    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    snapshot = monitor.pool_snapshot()
    assert snapshot.checked_out == 0 == engine.pool.checkedout()  # type: ignore[attr-defined]
    assert snapshot.pending_requests == 0
    assert snapshot.counters.checkouts + snapshot.counters.timeouts <= 16 * 150
    assert snapshot.counters.checkouts >= 16 * 150 - snapshot.counters.timeouts
    assert snapshot.counters.detaches > 0 and snapshot.counters.invalidations_hard > 0
    assert snapshot.counters.listener_errors == 0


def test_app_connect_listener_that_raises_leaves_books_right(
    engine: Engine, monitor: PoolMonitor
) -> None:
    def broken(dbapi_connection: object, record: object) -> None:
        raise RuntimeError("app setup failed")

    event.listen(engine, "connect", broken)
    try:
        with pytest.raises(RuntimeError, match="app setup failed"):
            engine.connect()
    finally:
        event.remove(engine, "connect", broken)
    assert monitor.pool_snapshot().checked_out == 0 == engine.pool.checkedout()  # type: ignore[attr-defined]
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT 1")) == 1
    assert monitor.pool_snapshot().counters.listener_errors == 0


@pytest.mark.pool_monitor_allow(
    reason="holds the whole pool: the timeout shows the wrapper survived", kinds="pool_timeout"
)
def test_dispose_keeps_the_acquire_wrapper(engine: Engine, monitor: PoolMonitor) -> None:
    engine.dispose()
    held = [engine.connect() for _ in range(4)]
    try:
        with pytest.raises(sa_exc.TimeoutError):
            engine.connect()
    finally:
        for conn in held:
            conn.close()
    assert monitor.pool_snapshot().counters.timeouts == 1


def _select_one(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def test_a_disposed_pool_is_freed_at_once(engine: Engine, monitor: PoolMonitor) -> None:
    # As without a monitor: a pool kept by a reference cycle through its wrappers would count
    # as a pool of the app ("One engine per app") until the collector ran.
    _select_one(engine)
    old = weakref.ref(engine.pool)
    gc.disable()
    try:
        engine.dispose()
        assert old() is None
    finally:
        gc.enable()
    _select_one(engine)  # the new pool is watched as the old one was
    assert monitor.pool_snapshot().counters.checkouts == 2


def test_detach_removes_every_hook(bare_engine: Engine) -> None:
    engine = bare_engine
    creator = engine.pool._invoke_creator
    pool_monitor = PoolMonitor(engine, probe=False)
    pool_monitor.detach()
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    snapshot = pool_monitor.pool_snapshot()
    assert snapshot.counters.checkouts == 0 and snapshot.create_time.count == 0
    assert "_do_get" not in vars(engine.pool)
    assert engine.pool._invoke_creator is creator
    assert "do_execute" not in vars(engine.dialect)


def test_failed_statement_is_counted_and_its_error_reaches_the_app(
    engine: Engine, monitor: PoolMonitor
) -> None:
    with engine.connect() as conn, pytest.raises(sa_exc.DataError, match="division by zero"):
        conn.execute(text("SELECT 1 / 0"))
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT 2")) == 2
    counters = monitor.pool_snapshot().counters
    assert counters.statement_errors == 1 and counters.listener_errors == 0


def test_slow_statement_is_grouped_without_its_parameters(
    engine: Engine, monitor: PoolMonitor
) -> None:
    for secret in ("param-secret-1", "param-secret-2"):
        with engine.connect() as conn:
            conn.execute(
                text("SELECT pg_sleep(0.25), 'literal-secret' AS a, :p AS b"), {"p": secret}
            )
    snapshot = monitor.pool_snapshot()
    (group,) = snapshot.slow_queries
    assert group.count == 2 and group.max_s >= 0.25
    dumped = json.dumps(to_dict(snapshot))
    assert "param-secret" not in dumped and "literal-secret" not in dumped
    assert "pg_sleep" in group.statement


def test_listener_failure_is_counted_and_never_raised(
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise ValueError("bug in the monitor")

    # Before attaching: the acquire wrapper binds the tracker's methods once.
    monkeypatch.setattr(PoolTracker, "checkout", explode)
    monitor = PoolMonitor(engine, probe=False)
    try:
        for _ in range(3):
            with engine.connect() as conn:
                assert conn.scalar(text("SELECT 1")) == 1
        assert monitor.pool_snapshot().counters.listener_errors == 3
        assert sum("listener 'checkout' failed" in r.getMessage() for r in caplog.records) == 1
    finally:
        monitor.detach()


def test_a_failing_wait_record_leaves_the_pool_timeout_to_the_app(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise ValueError("bug in the monitor")

    monkeypatch.setattr(PoolTracker, "wait_failed", explode)
    monitor = PoolMonitor(engine, probe=False)
    held = [engine.connect() for _ in range(4)]  # pool_size + max_overflow of the fixture
    try:
        with pytest.raises(sa_exc.TimeoutError):
            engine.connect()
        assert monitor.pool_snapshot().counters.listener_errors == 1
    finally:
        for conn in held:
            conn.close()
        monitor.detach()


def test_orm_session_site_is_the_app_line(engine: Engine, monitor: PoolMonitor) -> None:
    from sqlalchemy.orm import Session

    session = Session(engine)
    try:
        session.execute(text("SELECT 1"))  # the ORM checks out here, through generated code
        (view,) = [c for c in monitor.pool_snapshot().connections if c.checked_out]
        assert view.site[0].filename == __file__
        assert "session.execute" in view.site[0].source
    finally:
        session.close()
