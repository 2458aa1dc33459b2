"""Holder attribution through the ASGI middleware: route template, request id, one session per request."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, text

from monitor.pool_monitor import PoolMonitor
from monitor.web.install import install_monitor


@pytest.fixture
def app(engine: Engine, monitor: PoolMonitor) -> Iterator[FastAPI]:
    app = FastAPI()
    install_monitor(app, monitor)
    kept: list[Connection] = []

    @app.get("/items/{item_id}")
    def read_item(item_id: int) -> dict[str, object]:
        with engine.connect() as conn:
            view = next(c for c in monitor.pool_snapshot().connections if c.checked_out)
            conn.execute(text("SELECT 1"))
        assert view.holder is not None
        return {"route": view.holder.route, "request_id": view.holder.request_id}

    @app.get("/keep/{name}")
    def keep_a_connection(name: str) -> dict[str, str]:
        kept.append(engine.connect())  # held past the end of the request, as a leak is
        return {"name": name}

    @app.get("/two")
    def two_connections() -> dict[str, int]:
        with engine.connect() as first, engine.connect() as second:
            first.execute(text("SELECT 1"))
            second.execute(text("SELECT 1"))
        return {"ok": 1}

    yield app
    for conn in kept:
        conn.close()


def test_checkout_knows_route_template_and_request_id(app: FastAPI) -> None:
    with TestClient(app) as client:
        body = client.get("/items/42", headers={"x-request-id": "abc-123"}).json()
        assert body == {"route": "GET /items/{item_id}", "request_id": "abc-123"}
        generated = client.get("/items/7", headers={"x-request-id": "<script>"}).json()
        assert generated["request_id"] != "<script>" and generated["request_id"]


@pytest.mark.pool_monitor_allow(
    reason="GET /two holds two connections at once: the flag under test",
    kinds="multi_connection_request",
)
def test_request_holding_two_connections_is_flagged(app: FastAPI, monitor: PoolMonitor) -> None:
    with TestClient(app) as client:
        client.get("/items/1")
        assert monitor.pool_snapshot().counters.multi_connection_requests == 0
        client.get("/two")
        client.get("/two")
    snapshot = monitor.pool_snapshot()
    assert snapshot.counters.multi_connection_requests == 2
    assert snapshot.multi_connection_requests[0].route == "GET /two"


def test_the_request_stays_with_its_own_task(
    app: FastAPI, engine: Engine, monitor: PoolMonitor
) -> None:
    # The middleware never resets the variable: the server's task per request ends it.
    with TestClient(app) as client:
        assert client.get("/items/5").json()["route"] == "GET /items/{item_id}"
    with engine.connect():
        (view,) = [c for c in monitor.pool_snapshot().connections if c.checked_out]
        assert view.holder is not None and view.holder.kind == "task"


@pytest.mark.pool_monitor_allow(
    reason="GET /keep/a keeps its connection past the request (the app fixture closes it)",
    kinds="held_after_test",
)
def test_a_connection_held_past_its_request_still_names_it(
    app: FastAPI, monitor: PoolMonitor
) -> None:
    # The request lets go of the ASGI scope when it ends (no reference cycle through it), and
    # keeps what a holder shows: method, route template, request id.
    with TestClient(app) as client:
        client.get("/keep/a", headers={"x-request-id": "kept-1"})
        (view,) = [c for c in monitor.pool_snapshot().connections if c.checked_out]
    assert view.holder is not None
    assert (view.holder.route, view.holder.request_id) == ("GET /keep/{name}", "kept-1")


def test_a_task_started_by_a_request_that_runs_on_after_it_is_its_own_holder(
    engine: Engine, monitor: PoolMonitor
) -> None:
    app = FastAPI()
    install_monitor(app, monitor)
    started: list[asyncio.Task[None]] = []
    release = asyncio.Event()

    async def later() -> None:
        await release.wait()
        with engine.connect() as conn:  # after its request ended: the task holds it
            conn.execute(text("SELECT 1"))
            (view,) = [c for c in monitor.pool_snapshot().connections if c.checked_out]
            assert view.holder is not None
            assert (view.holder.kind, view.holder.route) == ("task", "send-mail")
            assert monitor.tracker.sweep() == []

    @app.post("/signup")
    async def signup() -> dict[str, str]:
        started.append(asyncio.create_task(later(), name="send-mail"))
        return {"ok": "yes"}

    async def finish() -> None:
        release.set()
        await started[0]

    with TestClient(app) as client:
        assert client.post("/signup").status_code == 200
        assert client.portal is not None
        client.portal.call(finish)
