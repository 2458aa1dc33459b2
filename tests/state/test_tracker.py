"""The pool tracker driven by hand with a fake clock: leaks, GC reclaims, timeouts, slow queries."""

from __future__ import annotations

import asyncio
import logging
import threading
from types import SimpleNamespace

import pytest

from monitor.state.holders import Holder, RequestScope
from monitor.state.records import LeakClass, to_dict
from monitor.state.tracker import PoolTracker, classify
from tests.state.conftest import FakeClock


def _connect(tracker: PoolTracker, pid: int = 100):
    slot = tracker.new_slot()
    tracker.connected(slot, pid, 0.002)
    return slot


def test_leak_appears_after_threshold_and_resolves_on_return(
    tracker: PoolTracker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    slot = _connect(tracker)
    request = RequestScope.named("GET", "/products/7", "req-1")
    tracker.checkout(slot, request, None, ())

    clock.advance(4.9)
    assert tracker.sweep() == []

    clock.advance(0.2)
    with caplog.at_level(logging.INFO, logger="monitor.leaks"):
        found = tracker.sweep({100: "idle in transaction"})
        assert tracker.sweep() == []  # logged and counted once only
    assert len(found) == 1
    assert found[0].leak_class is LeakClass.IDLE_IN_TRANSACTION
    assert found[0].holder is not None and found[0].holder.route == "GET /products/7"
    assert found[0].held_for_s == pytest.approx(5.1)
    assert sum("leak suspected" in r.message for r in caplog.records) == 1

    snapshot = tracker.snapshot()
    assert len(snapshot.leaks) == 1
    assert snapshot.counters.leaks_by_class["idle_in_transaction"] == 1

    clock.advance(1.0)
    with caplog.at_level(logging.INFO, logger="monitor.leaks"):
        tracker.checkin(slot)
    snapshot = tracker.snapshot()
    assert snapshot.leaks == ()
    assert snapshot.resolved_leaks[0].how_resolved == "returned"
    assert snapshot.resolved_leaks[0].held_for_s == pytest.approx(6.1)
    assert any("resolved after 6.1 s" in r.message for r in caplog.records)
    assert snapshot.checked_out == 0 and snapshot.counters.gc_reclaimed == 0


def test_reclaimed_checkin_counts_a_gc_reclaim(tracker: PoolTracker, clock: FakeClock) -> None:
    slot = _connect(tracker)
    tracker.checkout(slot, None, "worker-1", ())
    clock.advance(2)
    tracker.checkin(slot, reclaimed=True)
    snapshot = tracker.snapshot()
    assert snapshot.counters.gc_reclaimed == 1
    assert snapshot.gc_reclaims[0].holder is not None
    assert snapshot.gc_reclaims[0].holder.route == "worker-1"
    assert snapshot.gc_reclaims[0].held_for_s == pytest.approx(2)


def test_timeout_keeps_who_held_every_connection(tracker: PoolTracker, clock: FakeClock) -> None:
    for index in range(2):
        slot = _connect(tracker, pid=200 + index)
        tracker.checkout(slot, RequestScope.named("POST", f"/hold/{index}", f"r{index}"), None, ())
    clock.advance(3)
    tracker.wait_failed(1.5, timed_out=True)
    snapshot = tracker.snapshot()
    assert snapshot.counters.timeouts == 1
    record = snapshot.timeouts[0]
    assert record.waited_s == 1.5
    assert [view.holder.route for view in record.holders if view.holder] == [
        "POST /hold/0",
        "POST /hold/1",
    ]
    assert all(view.held_for_s == pytest.approx(3) for view in record.holders)


def test_leaks_and_timeouts_count_by_route_with_a_bounded_number_of_routes(
    tracker: PoolTracker, clock: FakeClock
) -> None:
    def routed(method: str, template: str, path: str) -> RequestScope:
        route = SimpleNamespace(path=template)  # what the router writes into the scope
        return RequestScope({"type": "http", "method": method, "path": path, "route": route})

    slot = _connect(tracker)
    tracker.checkout(slot, routed("GET", "/slow/{n}", "/slow/1"), None, ())
    clock.advance(6)
    tracker.sweep()
    tracker.wait_failed(1.0, timed_out=True, request=routed("POST", "/orders", "/orders"))
    tracker.wait_failed(
        1.0, timed_out=True, request=routed("GET", "/slow/{n}", "/slow/2").background()
    )
    tracker.wait_failed(1.0, timed_out=True, task="nightly-report")  # no request: one key
    unmatched = RequestScope.named("GET", "/no/such/route/123", "r3")  # raw paths never count
    tracker.wait_failed(1.0, timed_out=True, request=unmatched)
    counters = tracker.snapshot().counters
    assert counters.leaks_by_route == {"GET /slow/{n}": 1}
    assert counters.timeouts_by_route == {
        "POST /orders": 1,
        "background of GET /slow/{n}": 1,
        "(no request)": 1,
        "(unmatched route)": 1,
    }
    for index in range(150):  # an app with very many routes: the labels stay bounded
        tracker.wait_failed(1.0, timed_out=True, request=routed("GET", f"/r{index}", "/"))
    by_route = tracker.snapshot().counters.timeouts_by_route
    assert len(by_route) == 101 and by_route["(other routes)"] == 54
    assert sum(by_route.values()) == 154


def test_second_connection_of_a_request_is_flagged_once(tracker: PoolTracker) -> None:
    request = RequestScope.named("GET", "/two", "r-2")
    slots = [_connect(tracker, pid) for pid in (1, 2, 3)]
    for slot in slots:
        tracker.checkout(slot, request, None, ())
    snapshot = tracker.snapshot()
    assert snapshot.counters.multi_connection_requests == 1
    assert snapshot.multi_connection_requests[0].route == "GET /two"
    for slot in slots:
        tracker.checkin(slot)
    assert request.held == {tracker: 0}


def test_slow_queries_grouped_and_bounded(clock: FakeClock) -> None:
    tracker = PoolTracker(
        "t", leak_threshold_s=1, slow_query_s=0.1, clock=clock, max_slow_queries=3
    )
    tracker.slow_query("fp-a", "SELECT $1", 0.5, "GET /a")
    tracker.slow_query("fp-a", "SELECT $1", 1.5, "GET /b")
    for name in ("fp-b", "fp-c", "fp-d"):
        tracker.slow_query(name, f"SELECT {name}", 0.2, None)
    snapshot = tracker.snapshot()
    assert snapshot.counters.slow_queries == 5
    assert [g.fingerprint for g in snapshot.slow_queries] == [
        "fp-b",
        "fp-c",
        "fp-d",
    ]  # fp-a evicted first
    tracker.slow_query("fp-b", "SELECT fp-b", 3.0, "GET /b")
    top = tracker.snapshot().slow_queries[0]
    assert (top.fingerprint, top.count, top.max_s) == ("fp-b", 2, 3.0)


def test_close_keeps_checkout_total_monotonic(tracker: PoolTracker) -> None:
    slot = _connect(tracker)
    for _ in range(3):
        tracker.checkout(slot, None, "t", ())
        tracker.checkin(slot)
    assert tracker.snapshot().counters.checkouts == 3
    tracker.closed(slot)
    snapshot = tracker.snapshot()
    assert snapshot.counters.checkouts == 3 and snapshot.connections == ()


def test_detach_of_a_held_connection_releases_it(tracker: PoolTracker) -> None:
    slot = _connect(tracker)
    tracker.checkout(slot, None, "t", ())
    tracker.detached(slot)
    snapshot = tracker.snapshot()
    assert snapshot.checked_out == 0 and snapshot.counters.detaches == 1


def test_history_of_a_slot_is_bounded(tracker: PoolTracker) -> None:
    slot = _connect(tracker)
    for _ in range(100):
        tracker.checkout(slot, None, "t", ())
        tracker.checkin(slot)
    (view,) = tracker.snapshot().connections
    assert 0 < len(view.history) <= 24
    assert view.history[-1].kind == "checkin"


def test_history_shows_the_last_cycles_with_their_times(
    tracker: PoolTracker, clock: FakeClock
) -> None:
    slot = _connect(tracker)
    for _ in range(30):
        tracker.checkout(slot, None, "t", ())
        clock.advance(0.25)
        tracker.checkin(slot)
        clock.advance(0.75)
    (view,) = tracker.snapshot().connections
    assert [event.kind for event in view.history] == ["checkout", "checkin"] * 12
    held = [b.at - a.at for a, b in zip(view.history[::2], view.history[1::2], strict=True)]
    assert held == pytest.approx([0.25] * 12)
    # the newest cycle: checked out 1.0 s before the snapshot, checked in 0.75 s before it
    assert view.history[-1].at == pytest.approx(tracker.snapshot().taken_at - 0.75)


def test_checkout_cycles_leave_nothing_for_the_garbage_collector(tracker: PoolTracker) -> None:
    import gc

    slot = _connect(tracker)
    request = RequestScope.named("GET", "/x", "r")
    gc.collect()
    gc.disable()  # nothing is collected meanwhile: every surviving container stays in view
    try:
        before = len(gc.get_objects(generation=0))
        for _ in range(1_000):  # fewer than a fold batch: the samples stay queued
            tracker.checkout(slot, request, None, (), 0.001)
            tracker.checkin(slot)
        grown = len(gc.get_objects(generation=0)) - before
    finally:
        gc.enable()
    # Queued samples and the slot's cycles are floats and complex numbers, which the collector
    # does not track; a tuple per cycle would leave a thousand containers here.
    assert grown < 20
    assert tracker.snapshot().use_time.count == 1_000


def test_snapshot_is_json_ready(tracker: PoolTracker) -> None:
    import json

    slot = _connect(tracker)
    tracker.checkout(slot, RequestScope.named("GET", "/x", "r"), None, ())
    tracker.wait_failed(0.003, timed_out=False)
    data = to_dict(tracker.snapshot())
    text = json.dumps(data)
    assert '"route": "GET /x"' in text
    assert data["wait_time"]["count"] == 1


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("idle in transaction", LeakClass.IDLE_IN_TRANSACTION),
        ("idle in transaction (aborted)", LeakClass.IDLE_IN_TRANSACTION),
        ("idle", LeakClass.IDLE),
        ("active", LeakClass.ACTIVE),
        (None, LeakClass.UNKNOWN),
        ("disabled", LeakClass.UNKNOWN),
    ],
)
def test_classify(state: str | None, expected: LeakClass) -> None:
    assert classify(state) is expected


def test_wait_time_given_at_checkout_lands_in_the_histogram(tracker: PoolTracker) -> None:
    slot = _connect(tracker)
    tracker.checkout(slot, None, "t", (), 0.003)
    tracker.checkin(slot)
    tracker.checkout(slot, None, "t", ())  # not timed by the caller: no sample
    wait = tracker.snapshot().wait_time
    assert wait.count == 1 and wait.quantile(1.0) == 0.005  # in the bucket (0.001, 0.005]


def test_use_time_counts_every_cycle_across_folds(tracker: PoolTracker, clock: FakeClock) -> None:
    slot = _connect(tracker)
    for _ in range(5_000):  # more than two fold batches
        tracker.checkout(slot, None, "t", (), 0.0005)
        clock.advance(0.002)
        tracker.checkin(slot)
    tracker.checkout(slot, None, "t", ())  # still held: not a use-time sample yet
    snapshot = tracker.snapshot()
    assert snapshot.use_time.count == 5_000 and snapshot.wait_time.count == 5_000
    assert snapshot.use_time.sum == pytest.approx(10.0)
    assert snapshot.use_time.cumulative_counts[0] == 0  # 2 ms: above the 1 ms bucket
    assert snapshot.use_time.cumulative_counts[1] == 5_000
    assert snapshot.counters.checkouts == 5_001


def test_history_spells_out_each_cycle_in_time_order(
    tracker: PoolTracker, clock: FakeClock
) -> None:
    slot = _connect(tracker)
    tracker.checkout(slot, None, "t", ())
    clock.advance(1)
    tracker.invalidated(slot, soft=False, reason="OperationalError")  # during the checkout
    clock.advance(1)
    tracker.checkin(slot, reclaimed=True)
    clock.advance(1)
    tracker.checkout(slot, None, "t", ())  # held now
    (view,) = tracker.snapshot().connections
    assert [(event.kind, event.detail) for event in view.history] == [
        ("connect", "pid 100"),
        ("checkout", ""),
        ("invalidate", "OperationalError"),
        ("checkin", "gc"),
        ("checkout", ""),
    ]
    assert [event.at for event in view.history] == sorted(event.at for event in view.history)


# ---- ownership ---------------------------------------------------------------------------------


def test_a_checkout_that_outlived_its_request_is_a_leak_at_the_next_sweep(
    tracker: PoolTracker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    slot = _connect(tracker)
    request = RequestScope.named("GET", "/keep", "keep-1")
    tracker.checkout(slot, request, None, ())
    clock.advance(0.1)
    assert tracker.sweep() == []  # well under the 5 s threshold, its request still running
    request.finish()
    with caplog.at_level(logging.WARNING, logger="monitor.leaks"):
        (leak,) = tracker.sweep({100: "idle in transaction"})
    # Its owner's end decides, not the time held nor what the server sees.
    assert leak.leak_class is LeakClass.OUTLIVED_OWNER and leak.reason == "outlived its owner"
    assert tracker.snapshot({100: "idle"}).leaks[0].leak_class is LeakClass.OUTLIVED_OWNER
    (record,) = caplog.records
    assert "keep-1" in record.getMessage() and "outlived its owner" in record.getMessage()
    assert record.request_id == "keep-1" and record.owner == "request"  # type: ignore[attr-defined]


def test_a_live_owner_that_keeps_working_holds_long_without_a_leak(
    tracker: PoolTracker, clock: FakeClock
) -> None:
    slot = _connect(tracker)
    tracker.checkout(slot, RequestScope.named("GET", "/stream", "s-1"), None, ())
    for _ in range(20):  # 40 s, a statement every 2 s (threshold 5 s, ceiling 50 s)
        clock.advance(2)
        slot.used_at = clock.now
        assert tracker.sweep() == []
    snapshot = tracker.snapshot()
    assert snapshot.counters.long_holds == 1  # one hold, counted once
    (hold,) = snapshot.long_holds
    assert hold.holder is not None and hold.holder.route == "GET /stream"
    assert (hold.held_for_s, hold.unused_for_s, hold.ceiling_s) == (40, 0, 50)
    assert not hold.declared


def test_a_live_owner_leaving_it_unused_past_the_threshold_is_suspected(
    tracker: PoolTracker, clock: FakeClock
) -> None:
    slot = _connect(tracker)
    tracker.checkout(slot, None, "worker", ())
    clock.advance(4)
    slot.used_at = clock.now
    clock.advance(4.9)
    assert tracker.sweep() == []  # held 8.9 s, unused 4.9 s: a long hold
    clock.advance(0.2)
    (leak,) = tracker.sweep({100: "idle in transaction"})
    assert leak.leak_class is LeakClass.IDLE_IN_TRANSACTION and leak.reason == "unused for 5.1 s"
    assert tracker.snapshot().long_holds == ()


def test_a_statement_running_past_the_threshold_is_not_unused(
    tracker: PoolTracker, clock: FakeClock
) -> None:
    slot = _connect(tracker)
    tracker.checkout(slot, None, "worker", ())
    slot.used_at = float("inf")  # what the statement wrapper writes while one runs
    clock.advance(30)
    assert tracker.sweep() == []
    assert tracker.snapshot().long_holds[0].unused_for_s == 0


def test_past_the_ceiling_even_a_busy_owner_is_suspected(
    tracker: PoolTracker, clock: FakeClock
) -> None:
    slot = _connect(tracker)
    tracker.checkout(slot, None, "worker", ())
    clock.advance(50)
    slot.used_at = clock.now
    (leak,) = tracker.sweep({100: "active"})
    assert leak.leak_class is LeakClass.ACTIVE and leak.reason == "held past its 50 s ceiling"


def test_declared_long_holders_have_their_own_ceiling(clock: FakeClock) -> None:
    tracker = PoolTracker(
        "test", leak_threshold_s=5.0, slow_query_s=0.1, clock=clock,
        long_hold_ceiling_s=20, long_hold_routes={"/reports/{id}": 100},
    )  # fmt: skip

    class Route:
        path = "/reports/{id}"

    by_setting = RequestScope({"type": "http", "method": "GET", "route": Route(), "headers": []})
    by_dependency = RequestScope.named("GET", "/export", "e-1")
    by_dependency.long_hold_s = 60
    undeclared = RequestScope.named("GET", "/other", "o-1")
    slots = [_connect(tracker, pid) for pid in (1, 2, 3, 4)]
    for slot, owner in zip(slots, (by_setting, by_dependency, undeclared), strict=False):
        tracker.checkout(slot, owner, None, ())
    by_dependency.response_sent = True  # its background work inherits the declaration
    tracker.checkout(slots[3], by_dependency, None, ())
    clock.advance(30)  # never used: a declared holder is judged by its ceiling alone
    (leak,) = tracker.sweep()
    assert leak.holder is not None and leak.holder.route == "GET /other"
    holds = {hold.holder.route: hold for hold in tracker.snapshot().long_holds if hold.holder}
    assert holds["GET /reports/{id}"].ceiling_s == 100 and holds["GET /reports/{id}"].declared
    assert holds["GET /export"].ceiling_s == 60
    assert holds["background of GET /export"].ceiling_s == 60
    clock.advance(30)
    assert {leak.holder.route for leak in tracker.sweep() if leak.holder} == {
        "GET /export", "background of GET /export",
    }  # fmt: skip


def test_background_work_is_its_own_owner_named_after_its_request(
    tracker: PoolTracker, clock: FakeClock
) -> None:
    request = RequestScope.named("POST", "/orders", "o-7")
    first, second = _connect(tracker, 1), _connect(tracker, 2)
    tracker.checkout(first, request, None, ())
    request.response_sent = True
    tracker.checkout(second, request, None, ())  # after the response: the background task
    views = {v.slot_id: v.holder for v in tracker.snapshot().connections}
    assert views[first.id] == Holder("request", "POST /orders", "o-7")
    assert views[second.id] == Holder("background", "background of POST /orders", "o-7")
    assert tracker.snapshot().counters.multi_connection_requests == 0  # two owners, one each
    request.finish()
    assert {leak.slot_id for leak in tracker.sweep()} == {first.id, second.id}


def test_a_task_or_thread_owner_ends_with_it(tracker: PoolTracker) -> None:
    ended = threading.Thread(target=lambda: None)
    ended.start()
    ended.join()
    assert ended.ident is not None

    async def done() -> asyncio.Task[None]:
        task = asyncio.create_task(asyncio.sleep(0))
        await task
        return task

    finished_task = asyncio.run(done())
    alive = _connect(tracker, 1)
    tracker.checkout(alive, None, threading.get_ident(), ())
    for pid, owner in ((2, ended.ident), (3, finished_task)):
        tracker.checkout(_connect(tracker, pid), None, owner, ())
    leaks = tracker.sweep()
    assert sorted(leak.pid or 0 for leak in leaks) == [2, 3]
    assert all(leak.leak_class is LeakClass.OUTLIVED_OWNER for leak in leaks)


def test_connections_of_two_pools_in_one_request_are_pools_used_not_a_violation(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    write = PoolTracker("write", leak_threshold_s=5.0, slow_query_s=0.1, clock=clock)
    read = PoolTracker("read", leak_threshold_s=5.0, slow_query_s=0.1, clock=clock)
    request = RequestScope.named("GET", "/split", "split-1")
    with caplog.at_level(logging.WARNING, logger="monitor.leaks"):
        for tracker in (write, read, read):  # the read pool twice, one after the other
            slot = _connect(tracker)
            tracker.checkout(slot, request, None, ())
            if tracker is read:
                tracker.checkin(slot)
    assert caplog.records == []
    assert write.snapshot().counters.multi_connection_requests == 0
    snapshot = read.snapshot()
    assert snapshot.counters.multi_connection_requests == 0
    assert snapshot.counters.multi_pool_requests == 1
    (used,) = snapshot.multi_pool_requests
    assert (used.route, used.request_id, used.pools) == ("GET /split", "split-1", ("write", "read"))


def test_the_drift_agrees_with_the_pool_count_including_connecting_and_returning(
    clock: FakeClock,
) -> None:
    pool_count = [0]
    tracker = PoolTracker(
        "test", leak_threshold_s=5.0, slow_query_s=0.1, clock=clock,
        pool_checked_out=lambda: pool_count[0],
    )  # fmt: skip
    assert tracker.accounting_drift() == 0
    pool_count[0] = 2  # the pool counts a connection still connecting, and one returning
    tracker.connecting.append(None)
    tracker.returning.append(None)
    assert tracker.snapshot().accounting_drift == 0
    tracker.returning.pop()
    assert tracker.snapshot().accounting_drift == -1  # a real disagreement stays visible
    assert PoolTracker("t", leak_threshold_s=1, slow_query_s=1).accounting_drift() is None
