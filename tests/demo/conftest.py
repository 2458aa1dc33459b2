"""Fixtures of the demo tests: an app with the scenarios enabled, and one served over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from monitor.app import create_app
from monitor.settings import Settings
from tests.servers import InFlight, serve_in_thread

HTMX = {"HX-Request": "true"}
HOLD_TTL_S = 3.0


@pytest.fixture
def demo_settings(app_settings: Settings) -> Settings:
    """`app_settings` (pool 3 + 2, pool_timeout 1 s, leak threshold 1 s) with the demo on."""
    return app_settings.model_copy(update={"demo_routes": True, "demo_hold_ttl_s": HOLD_TTL_S})


@pytest.fixture
def demo_client(demo_settings: Settings) -> Iterator[TestClient]:
    """A running app with the demo routes; shutdown must release whatever a test left held."""
    app = create_app(demo_settings)
    with TestClient(app) as client:
        yield client
    assert app.state.demo_holdings.held == 0, "shutdown left demo holdings"
    assert app.state.engine.pool.checkedout() == 0, "a connection was left checked out"


def snapshot(client: TestClient) -> dict[str, Any]:
    response = client.get("/monitor/api/snapshot")
    assert response.status_code == 200
    data: dict[str, Any] = response.json()
    return data


def wait_for(
    client: TestClient, check: Callable[[dict[str, Any]], bool], timeout_s: float, what: str
) -> dict[str, Any]:
    """Poll the monitor's snapshot until `check` holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        data = snapshot(client)
        if check(data):
            return data
        if time.monotonic() >= deadline:
            raise AssertionError(f"not observed within {timeout_s} s: {what}")
        time.sleep(0.1)


@pytest.fixture
def served_app(app_settings: Settings) -> Iterator[tuple[str, Any]]:
    """The app served by uvicorn on a free loopback port, in a thread: (base URL, app); the
    requests it is still answering in `app.state.in_flight.count`."""
    app = create_app(app_settings)
    app.state.in_flight = InFlight(app)
    with serve_in_thread(app.state.in_flight) as base:
        yield base, app
