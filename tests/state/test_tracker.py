"""The pool tracker driven by hand with a fake clock: leaks, GC reclaims, timeouts, slow queries."""

from __future__ import annotations

import logging

import pytest

from monitor.state.holders import RequestScope
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
    assert request.connections_held == 0


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
