"""Each demo scenario against a real PostgreSQL, observed by the monitor through its snapshot."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from monitor.demo.scenarios import Holdings
from tests.demo.conftest import HOLD_TTL_S, HTMX, snapshot, wait_for

# The scenarios under test leak on purpose; a connection a test still holds at its end is not
# allowed (held_after_test stays judged).
pytestmark = pytest.mark.pool_monitor_allow(
    reason="demo scenarios: gc-leak drops a session, exhaust times the pool out, exhaust and "
    "two-sessions hold several connections in one request",
    kinds=("gc_reclaimed", "pool_timeout", "multi_connection_request"),
)

# app_settings: pool_size 3 + max_overflow 2, pool_timeout 1 s, leak threshold 1 s, probe 0.5 s.
CAPACITY = 5
POOL_TIMEOUT_S = 1.0


def post(client: TestClient, path: str, **params: Any) -> httpx.Response:
    response: httpx.Response = client.post(path, params=params, headers=HTMX)
    return response


def checked_out(client: TestClient) -> int:
    count: int = client.app.state.engine.pool.checkedout()  # type: ignore[attr-defined]
    return count


def test_leak_is_reported_with_its_route_then_resolved_by_release(demo_client: TestClient) -> None:
    response = post(demo_client, "/demo/leak", hold_s=HOLD_TTL_S)
    assert response.status_code == 200
    body = response.json()
    assert body["scenario"] == "leak" and body["held"] == 1 and body["release_at"]

    data = wait_for(
        demo_client,
        lambda d: any(leak["holder"]["route"] == "POST /demo/leak" for leak in d["pool"]["leaks"]),
        timeout_s=2.5,
        what="the leaked session in pool.leaks",
    )
    assert data["pool"]["checked_out"] == 1

    assert post(demo_client, "/demo/release").json()["released"] == 1
    assert checked_out(demo_client) == 0
    data = snapshot(demo_client)
    assert data["pool"]["leaks"] == []
    assert data["pool"]["resolved_leaks"][0]["how_resolved"] == "returned"


def test_gc_leak_is_counted_as_reclaimed_by_the_collector(demo_client: TestClient) -> None:
    before = snapshot(demo_client)["pool"]["counters"]["gc_reclaimed"]
    response = post(demo_client, "/demo/gc-leak")
    assert response.status_code == 200 and response.json()["held"] == 0
    data = wait_for(
        demo_client,
        lambda d: d["pool"]["counters"]["gc_reclaimed"] == before + 1,
        timeout_s=2,
        what="gc_reclaimed + 1",
    )
    assert data["pool"]["gc_reclaims"][0]["holder"]["route"] == "POST /demo/gc-leak"
    assert checked_out(demo_client) == 0


def test_idle_in_transaction_is_seen_by_the_server_probe(demo_client: TestClient) -> None:
    assert post(demo_client, "/demo/idle-in-transaction", hold_s=HOLD_TTL_S).status_code == 200

    def idle_in_tx(data: dict[str, Any]) -> bool:
        return any(
            held["server"] is not None
            and held["server"]["state"] == "idle in transaction"
            and held["connection"]["holder"]["route"] == "POST /demo/idle-in-transaction"
            for held in data["held"]
        )

    wait_for(demo_client, idle_in_tx, timeout_s=2.5, what="a held connection idle in transaction")
    assert post(demo_client, "/demo/release").json()["released"] == 1
    # The uncommitted write was rolled back on release.
    assert demo_client.get("/products").json()["total"] == 0


def test_slow_query_is_recorded_with_its_route(demo_client: TestClient) -> None:
    started = time.monotonic()
    response = post(demo_client, "/demo/slow-query", seconds=0.4)
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.4
    data = wait_for(
        demo_client,
        lambda d: any("pg_sleep" in group["statement"] for group in d["pool"]["slow_queries"]),
        timeout_s=2,
        what="pg_sleep in pool.slow_queries",
    )
    group = next(g for g in data["pool"]["slow_queries"] if "pg_sleep" in g["statement"])
    assert group["last_route"] == "POST /demo/slow-query" and group["max_s"] >= 0.4
    assert checked_out(demo_client) == 0


def test_exhaust_makes_crud_time_out_with_503(demo_client: TestClient) -> None:
    timeouts_before = snapshot(demo_client)["pool"]["counters"]["timeouts"]
    body = post(demo_client, "/demo/exhaust", hold_s=HOLD_TTL_S).json()
    assert body["held"] == CAPACITY and body["held_total"] == CAPACITY
    assert snapshot(demo_client)["pool_stats"]["checked_out"] == CAPACITY

    # A request from another thread, as a second client would send it.
    result: dict[str, Any] = {}

    def crud() -> None:
        started = time.monotonic()
        result["status"] = demo_client.get("/products").status_code
        result["elapsed"] = time.monotonic() - started

    worker = threading.Thread(target=crud)
    worker.start()
    worker.join(timeout=30)
    assert result["status"] == 503
    assert result["elapsed"] >= POOL_TIMEOUT_S  # the pool's timeout, honoured
    data = snapshot(demo_client)
    assert data["pool"]["counters"]["timeouts"] == timeouts_before + 1
    assert all(
        holder["holder"]["route"] == "POST /demo/exhaust"
        for holder in data["pool"]["timeouts"][0]["holders"]
    )

    assert post(demo_client, "/demo/release").json()["released"] == CAPACITY
    assert checked_out(demo_client) == 0
    assert demo_client.get("/products").status_code == 200


def test_two_sessions_count_as_a_multi_connection_request(demo_client: TestClient) -> None:
    before = snapshot(demo_client)["pool"]["counters"]["multi_connection_requests"]
    assert post(demo_client, "/demo/two-sessions").status_code == 200
    data = snapshot(demo_client)
    assert data["pool"]["counters"]["multi_connection_requests"] == before + 1
    assert data["pool"]["multi_connection_requests"][0]["route"] == "POST /demo/two-sessions"
    assert checked_out(demo_client) == 0


def test_release_frees_everything(demo_client: TestClient) -> None:
    assert post(demo_client, "/demo/leak", count=2).json()["held"] == 2
    assert post(demo_client, "/demo/idle-in-transaction").json()["held"] == 1
    assert checked_out(demo_client) == 3
    body = post(demo_client, "/demo/release").json()
    assert body["released"] == 3 and body["held_total"] == 0
    assert checked_out(demo_client) == 0
    assert post(demo_client, "/demo/release").json()["released"] == 0


def test_holdings_are_released_after_their_ttl(demo_client: TestClient) -> None:
    assert post(demo_client, "/demo/leak", hold_s=0.5).json()["held"] == 1
    assert post(demo_client, "/demo/exhaust", hold_s=1).json()["held"] == CAPACITY - 1
    assert checked_out(demo_client) == CAPACITY
    deadline = time.monotonic() + 1 + 1.0  # longest hold + 1 s (reliability §6 item 23)
    while checked_out(demo_client) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checked_out(demo_client) == 0
    assert demo_client.app.state.demo_holdings.held == 0  # type: ignore[attr-defined]


def test_leak_scenarios_leave_a_connection_for_crud(demo_client: TestClient) -> None:
    body = post(demo_client, "/demo/leak", count=50).json()
    assert body["held"] == CAPACITY - 1 and "clamped" in body["detail"]
    for path in ("/demo/leak", "/demo/idle-in-transaction", "/demo/slow-query"):
        assert post(demo_client, path).status_code == 409, path
    assert demo_client.get("/products").status_code == 200
    # Exhaust takes the rest by design.
    assert post(demo_client, "/demo/exhaust", hold_s=1).json()["held"] == 1
    assert post(demo_client, "/demo/release").json()["released"] == CAPACITY


def test_rapid_concurrent_holds_never_exceed_the_cap(demo_client: TestClient) -> None:
    statuses: list[int] = []
    lock = threading.Lock()

    def hammer() -> None:
        for path in ("/demo/leak", "/demo/idle-in-transaction", "/demo/slow-query"):
            params = {"seconds": 0.2} if path.endswith("slow-query") else {"count": 2000}
            status = demo_client.post(path, params=params, headers=HTMX).status_code
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert set(statuses) <= {200, 409}, statuses
    assert demo_client.app.state.demo_holdings.held <= CAPACITY - 1  # type: ignore[attr-defined]
    assert checked_out(demo_client) <= CAPACITY - 1
    post(demo_client, "/demo/release")
    assert checked_out(demo_client) == 0


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/demo/slow-query", {"seconds": 0}),
        ("/demo/slow-query", {"seconds": -1}),
        ("/demo/slow-query", {"seconds": 30.01}),
        ("/demo/slow-query", {"seconds": "nan"}),
        ("/demo/slow-query", {"seconds": "inf"}),
        ("/demo/slow-query", {"seconds": "a while"}),
        ("/demo/leak", {"hold_s": 0}),
        ("/demo/leak", {"hold_s": HOLD_TTL_S + 0.1}),
        ("/demo/leak", {"hold_s": 1e308}),
        ("/demo/leak", {"count": 0}),
        ("/demo/leak", {"count": 10**9}),
        ("/demo/leak", {"count": 1.5}),
        ("/demo/idle-in-transaction", {"hold_s": -3}),
        ("/demo/exhaust", {"hold_s": 600}),
    ],
)
def test_out_of_range_parameters_are_422(
    demo_client: TestClient, path: str, params: dict[str, Any]
) -> None:
    response = demo_client.post(path, params=params, headers=HTMX)
    assert response.status_code == 422, response.text
    assert checked_out(demo_client) == 0


def test_shutdown_releases_what_is_held(demo_settings: Any) -> None:
    from monitor.app import create_app

    app = create_app(demo_settings)
    with TestClient(app) as client:
        assert post(client, "/demo/leak", count=2).json()["held"] == 2
        holdings: Holdings = app.state.demo_holdings
    assert holdings.held == 0
    # A closed registry refuses new holdings instead of leaking past the app.
    assert holdings.reserve(1, CAPACITY) == 0


def test_holdings_reaper_releases_at_the_deadline() -> None:
    """The registry alone, with fake resources: released once, by the reaper thread."""

    class Resource:
        def __init__(self) -> None:
            self.closed = 0

        def close(self) -> None:
            self.closed += 1

    holdings = Holdings()
    resources = [Resource(), Resource()]
    granted = holdings.reserve(5, limit=2)
    assert granted == 2 and holdings.reserve(1, limit=2) == 0
    holdings.keep("test", list(resources), hold_s=0.2, reserved=granted)
    assert holdings.held == 2
    deadline = time.monotonic() + 2
    while holdings.held and time.monotonic() < deadline:
        time.sleep(0.02)
    assert holdings.held == 0 and [r.closed for r in resources] == [1, 1]
    assert holdings.close() == 0
