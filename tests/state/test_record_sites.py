"""The two-session rule, slow statements and pool timeouts keep their code sites and routes."""

from __future__ import annotations

import sys

from monitor.state.holders import RequestScope
from monitor.state.sites import RawSite, line_of
from monitor.state.tracker import PoolTracker
from tests.state.conftest import FakeClock


def _here() -> RawSite:
    frame = sys._getframe(1)
    return ((frame.f_code, frame.f_lasti),)


def _connect(tracker: PoolTracker, pid: int) -> object:
    slot = tracker.new_slot()
    tracker.connected(slot, pid, 0.001)
    return slot


def test_a_request_holding_several_connections_keeps_its_peak_and_every_site(
    tracker: PoolTracker,
) -> None:
    request = RequestScope.named("GET", "/many", "r-many")
    slots = [_connect(tracker, pid) for pid in (1, 2, 3)]
    sites = []
    for slot in slots:
        site = _here()
        sites.append(site)
        tracker.checkout(slot, request, None, site)  # type: ignore[arg-type]
    snapshot = tracker.snapshot()
    assert snapshot.counters.multi_connection_requests == 1  # one request, counted once
    (record,) = snapshot.multi_connection_requests
    assert (record.route, record.request_id, record.connections) == ("GET /many", "r-many", 3)
    assert len(record.sites) == 3
    assert all(site[0].filename == __file__ for site in record.sites)
    assert record.sites[0][0].function.startswith("test_a_request_holding")
    for slot in slots:
        tracker.checkin(slot)  # type: ignore[arg-type]
    # Taking two again later in the same request does not lower the peak.
    tracker.checkout(slots[0], request, None, ())  # type: ignore[arg-type]
    tracker.checkout(slots[1], request, None, ())  # type: ignore[arg-type]
    assert tracker.snapshot().multi_connection_requests[0].connections == 3


def test_a_pool_timeout_names_the_request_that_waited_and_where(
    tracker: PoolTracker, clock: FakeClock
) -> None:
    slot = _connect(tracker, 7)
    tracker.checkout(slot, RequestScope.named("POST", "/hold", "r-hold"), None, _here())  # type: ignore[arg-type]
    clock.advance(2)
    waiter = RequestScope.named("GET", "/products", "r-wait")
    tracker.wait_failed(1.0, timed_out=True, request=waiter, site=_here())
    (record,) = tracker.snapshot().timeouts
    assert record.waiter is not None
    assert (record.waiter.route, record.waiter.request_id) == ("GET /products", "r-wait")
    assert record.site[0].filename == __file__ and "request=waiter" in record.site[0].source
    assert record.holders[0].holder is not None and record.holders[0].holder.route == "POST /hold"
    # Without a request, the thread that waited is named.
    tracker.wait_failed(1.0, timed_out=True)
    waiter_holder = tracker.snapshot().timeouts[0].waiter
    assert waiter_holder is not None and waiter_holder.kind == "task"


def test_a_slow_statement_keeps_the_site_that_ran_it_last(tracker: PoolTracker) -> None:
    tracker.slow_query("fp", "SELECT pg_sleep($1)", 0.5, "GET /a", _here())
    later = _here()
    tracker.slow_query("fp", "SELECT pg_sleep($1)", 0.7, "GET /b", later)
    (group,) = tracker.snapshot().slow_queries
    assert (group.count, group.last_route) == (2, "GET /b")
    assert group.last_site[0].filename == __file__
    assert group.last_site[0].lineno == line_of(*later[0])
    assert tracker.snapshot(detail=False).slow_queries[0].last_site == ()
