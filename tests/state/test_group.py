"""Merging the reports of a group's workers, and reading them back from plain data."""

from __future__ import annotations

import json

import pytest

from monitor.state.codec import DecodeError, from_dict, to_plain
from monitor.state.group import (
    SCHEMA_VERSION,
    RetiredTotals,
    WorkerReport,
    merge_reports,
    retire,
)
from monitor.state.holders import RequestScope
from monitor.state.records import PoolStats, to_dict
from monitor.state.server import ServerHealthSnapshot
from monitor.state.tracker import PoolTracker
from tests.state.conftest import FakeClock
from tests.state.test_view import health

STATS = PoolStats(
    pool_class="QueuePool", size=3, max_overflow=2, max_connections=5, checked_out=1,
    checked_in=1, overflow=0, timeout_s=1.0, recycle_s=None, pre_ping=True, echo=False,
)  # fmt: skip


def worker(clock: FakeClock, pid: int, *, held: int, cycles: int, at: float) -> WorkerReport:
    """A worker whose tracker made `cycles` checkouts and still holds `held` connections."""
    tracker = PoolTracker(
        "app", leak_threshold_s=5, slow_query_s=1, clock=clock, wall_clock=lambda: clock.now
    )
    tracker.worker = pid
    slots = []
    for index in range(max(held, 1)):
        slot = tracker.new_slot()
        tracker.connected(slot, pid * 10 + index, 0.002)
        slots.append(slot)
    site = ((worker.__code__, 0),)  # a raw site: (code, last instruction) pairs
    for _ in range(cycles):
        tracker.checkout(slots[0], None, 1, (), waited_s=0.002)
        tracker.checkin(slots[0])
    for slot in slots[:held]:
        tracker.checkout(slot, RequestScope.named("POST", "/demo/leak", f"r{pid}"), 1, site)
    clock.advance(6)
    tracker.sweep()
    tracker.slow_query("fp", "SELECT $1", 2.0, "GET /x")
    return WorkerReport(SCHEMA_VERSION, pid, 100.0 + pid, at, tracker.snapshot(), STATS)


def test_report_survives_json(clock: FakeClock) -> None:
    report = worker(clock, 7, held=1, cycles=3, at=clock.now)
    assert to_plain(report) == to_dict(report)  # the fast encoder writes what to_dict does
    back = from_dict(WorkerReport, json.loads(json.dumps(to_plain(report))))
    assert back == report
    sample = health(())
    assert from_dict(ServerHealthSnapshot, json.loads(json.dumps(to_dict(sample)))) == sample


def test_decode_refuses_what_does_not_fit() -> None:
    with pytest.raises(DecodeError):
        from_dict(PoolStats, {**to_dict(STATS), "size": "three"})
    with pytest.raises(DecodeError):
        from_dict(PoolStats, {"size": 3})


def test_merge_adds_counters_and_shows_every_live_worker(clock: FakeClock) -> None:
    a = worker(clock, 1, held=1, cycles=5, at=clock.now)
    b = worker(clock, 2, held=2, cycles=7, at=clock.now)
    pool, stats, info = merge_reports([a, b], RetiredTotals(), now=clock.now, stale_after_s=10)
    assert pool.counters.checkouts == a.pool.counters.checkouts + b.pool.counters.checkouts == 15
    assert pool.wait_time.count == 12
    assert pool.checked_out == 3 and stats.checked_out == 2 and stats.max_connections == 10
    assert {c.worker for c in pool.connections if c.checked_out} == {1, 2}
    assert [leak.worker for leak in pool.leaks].count(2) == 2
    assert pool.counters.leaks_by_route == {"(unmatched route)": 3}  # added key by key
    (slow,) = pool.slow_queries
    assert slow.count == 2 and slow.total_s == 4.0
    assert info.answered_by == 1 and info.workers == (1, 2)


def test_stale_worker_counts_but_is_not_shown(clock: FakeClock) -> None:
    a = worker(clock, 1, held=0, cycles=2, at=clock.now)
    silent = worker(clock, 2, held=1, cycles=4, at=clock.now - 60)
    pool, _stats, info = merge_reports(
        [a, silent], RetiredTotals(), now=clock.now, stale_after_s=10
    )
    assert pool.counters.checkouts == 2 + 5  # four cycles and the held checkout
    assert pool.checked_out == 0 and pool.leaks == ()
    assert info.workers == (1,) and info.stale_workers == 1


def test_retired_worker_keeps_its_counts_once(clock: FakeClock) -> None:
    a = worker(clock, 1, held=0, cycles=2, at=clock.now)
    gone = worker(clock, 2, held=1, cycles=4, at=clock.now)
    before, _, _ = merge_reports([a, gone], RetiredTotals(), now=clock.now, stale_after_s=10)
    retired = retire(RetiredTotals(), gone, clock.now)
    assert retire(retired, gone, clock.now) is retired  # folded in once only
    # A reader that still found the file (it raced the reap) skips it by its key.
    racing, _, _ = merge_reports([a, gone], retired, now=clock.now, stale_after_s=10)
    after, _, info = merge_reports([a], retired, now=clock.now, stale_after_s=10)
    assert before.counters == racing.counters == after.counters
    assert before.use_time == after.use_time
    assert after.checked_out == 0 and info.retired_workers == 1
    back = from_dict(RetiredTotals, json.loads(json.dumps(to_dict(retired))))
    assert back == retired
