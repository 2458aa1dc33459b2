"""Leaks by ownership against real PostgreSQL: long holds that keep working are never leaks, a
connection that outlived its owner is one at once, every holder is named (sync and async)."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from fastapi import BackgroundTasks, Depends, FastAPI, WebSocket
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from monitor.instrumentation.attribution import AttributionMiddleware
from monitor.pool_monitor import PoolMonitor
from monitor.state.records import LeakClass
from tests.servers import wait_for

THRESHOLD_S = 1.0
STEP_S = 0.2  # a statement (or a fetch) every 0.2 s: working, never unused for the threshold
STEPS = 15  # 3 s of work: three thresholds


def leak_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "leak suspected" in r.getMessage()]


def sync_app(engine: Engine, kept: list[Connection]) -> FastAPI:
    app = FastAPI()
    app.add_middleware(AttributionMiddleware)

    def work(conn: Connection) -> Iterator[int]:
        for step in range(STEPS):
            yield conn.execute(text("SELECT CAST(:n AS int)"), {"n": step}).scalar_one()
            time.sleep(STEP_S)

    @app.get("/stream")
    def stream() -> StreamingResponse:
        def body() -> Iterator[bytes]:
            with engine.connect() as conn:
                for step in work(conn):
                    yield f"{step}\n".encode()

        return StreamingResponse(body())

    @app.get("/bg")
    def background(tasks: BackgroundTasks) -> dict[str, str]:
        def job() -> None:
            with engine.connect() as conn:
                for _ in work(conn):
                    pass

        tasks.add_task(job)
        return {"scheduled": "yes"}

    @app.websocket("/ws/{room}")
    async def room(websocket: WebSocket, room: str) -> None:
        await websocket.accept()

        def run() -> None:
            with engine.connect() as conn:
                for _ in work(conn):
                    pass

        await asyncio.to_thread(run)  # a sync engine off the loop, as a sync app would
        await websocket.send_text(room)
        await websocket.close()

    @app.get("/cursor")
    def cursor() -> dict[str, int]:
        rows = 0
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=10).execute(
                text("SELECT generate_series(1, CAST(:n AS int))"), {"n": 10 * STEPS}
            )
            for partition in result.partitions(10):  # a FETCH per partition, no statement
                rows += len(partition)
                time.sleep(STEP_S)
        return {"rows": rows}

    @app.get("/keep")
    def keep() -> dict[str, str]:
        kept.append(engine.connect())  # a session kept past its request
        return {"kept": "yes"}

    return app


def async_app(engine: AsyncEngine, kept: list[AsyncConnection]) -> FastAPI:
    app = FastAPI()
    app.add_middleware(AttributionMiddleware)

    async def work(conn: AsyncConnection) -> AsyncIterator[int]:
        for step in range(STEPS):
            yield (await conn.execute(text("SELECT CAST(:n AS int)"), {"n": step})).scalar_one()
            await asyncio.sleep(STEP_S)

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            async with engine.connect() as conn:
                async for step in work(conn):
                    yield f"{step}\n".encode()

        return StreamingResponse(body())

    @app.get("/bg")
    async def background(tasks: BackgroundTasks) -> dict[str, str]:
        async def job() -> None:
            async with engine.connect() as conn:
                async for _ in work(conn):
                    pass

        tasks.add_task(job)
        return {"scheduled": "yes"}

    @app.websocket("/ws/{room}")
    async def room(websocket: WebSocket, room: str) -> None:
        await websocket.accept()
        async with engine.connect() as conn:
            async for _ in work(conn):
                pass
        await websocket.send_text(room)
        await websocket.close()

    @app.get("/cursor")
    async def cursor() -> dict[str, int]:
        rows = 0
        async with engine.connect() as conn:
            result = await conn.stream(
                text("SELECT generate_series(1, CAST(:n AS int))"),
                {"n": 10 * STEPS},
                execution_options={"yield_per": 10},
            )
            async for partition in result.partitions(10):
                rows += len(partition)
                await asyncio.sleep(STEP_S)
        return {"rows": rows}

    @app.get("/keep")
    async def keep() -> dict[str, str]:
        kept.append(await engine.connect())
        return {"kept": "yes"}

    return app


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest, database_url: URL) -> Iterator[tuple[str, Any]]:
    """A monitored engine (psycopg2 or asyncpg) with room for every pattern at once."""
    if request.param == "sync":
        engine: Any = create_engine(database_url, pool_size=6, max_overflow=4, pool_timeout=2)
    else:
        engine = create_async_engine(
            database_url.set(drivername="postgresql+asyncpg"),
            pool_size=6,
            max_overflow=4,
            pool_timeout=2,
        )
    yield request.param, engine
    if request.param == "sync":
        engine.dispose()


@pytest.fixture
def monitored(flavour: tuple[str, Any]) -> Iterator[tuple[PoolMonitor, TestClient, list[Any]]]:
    """The flavour's app, its monitor sweeping every 0.25 s (threshold 1 s), and the list where
    `/keep` leaves connections."""
    kind, engine = flavour
    monitor = PoolMonitor(engine, leak_threshold_s=THRESHOLD_S, probe=False, pool_name=kind)
    kept: list[Any] = []
    app = sync_app(engine, kept) if kind == "sync" else async_app(engine, kept)
    monitor.start()
    try:
        with TestClient(app) as client:
            yield monitor, client, kept
            for conn in kept:
                if kind == "sync":
                    conn.close()
                else:
                    client.portal.call(conn.close)  # type: ignore[union-attr]
            if kind == "async":  # asyncpg connections belong to the app's loop
                client.portal.call(engine.dispose)  # type: ignore[union-attr]
    finally:
        monitor.detach()


@contextmanager
def scheduled_job(engine: Any, kind: str, client: TestClient) -> Iterator[None]:
    """A scheduled job working with the engine for 3 s: run by APScheduler in its worker thread
    (sync), or as an asyncio task on the app's loop (async); waited for on exit."""
    if kind == "sync":

        def job() -> None:
            with engine.connect() as conn:
                for step in range(STEPS):
                    conn.execute(text("SELECT CAST(:n AS int)"), {"n": step})
                    time.sleep(STEP_S)

        scheduler = BackgroundScheduler(timezone=UTC)
        scheduler.add_job(job, "date", run_date=datetime.now(UTC), id="nightly-report")
        scheduler.start()
        try:
            yield
        finally:
            scheduler.shutdown(wait=True)
        return

    async def run() -> None:
        async with engine.connect() as conn:
            for step in range(STEPS):
                await conn.execute(text("SELECT CAST(:n AS int)"), {"n": step})
                await asyncio.sleep(STEP_S)

    async def spawn() -> asyncio.Task[None]:
        return asyncio.create_task(run(), name="nightly-report")

    async def finish(task: asyncio.Task[None]) -> None:
        await task

    portal = client.portal
    assert portal is not None
    task = portal.call(spawn)
    try:
        yield
    finally:
        portal.call(finish, task)


def test_long_holds_that_keep_working_are_never_leaks(
    monitored: tuple[PoolMonitor, TestClient, list[Any]],
    flavour: tuple[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monitor, client, _ = monitored
    kind, engine = flavour
    results: dict[str, Any] = {}

    def call(name: str, path: str) -> None:
        response = client.get(path, headers={"x-request-id": f"{name}-1"})
        results[name] = (response.status_code, response.text)

    def websocket() -> None:
        with client.websocket_connect("/ws/lobby", headers={"x-request-id": "ws-1"}) as ws:
            results["ws"] = ws.receive_text()

    workers = [
        threading.Thread(target=call, args=("stream", "/stream")),
        threading.Thread(target=call, args=("bg", "/bg")),
        threading.Thread(target=call, args=("cursor", "/cursor")),
        threading.Thread(target=websocket),
    ]
    holders: dict[str, tuple[str, str | None]] = {}
    with (
        caplog.at_level(logging.WARNING, logger="monitor.leaks"),
        scheduled_job(engine, kind, client),
    ):
        for worker in workers:
            worker.start()
        # Watch the holders while they work: each named, each past the threshold a long hold.
        deadline = time.monotonic() + 15
        while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
            snapshot = monitor.pool_snapshot()
            for view in snapshot.connections:
                if view.holder is not None:
                    holders[view.holder.route] = (view.holder.kind, view.holder.request_id)
            time.sleep(0.1)
        for worker in workers:
            worker.join(10)
    snapshot = monitor.pool_snapshot()

    assert results["stream"][0] == 200 and results["stream"][1].count("\n") == STEPS
    assert results["cursor"] == (200, f'{{"rows":{10 * STEPS}}}')
    assert results["bg"][0] == 200 and results["ws"] == "lobby"
    assert leak_lines(caplog) == []
    assert snapshot.counters.leaks_by_class == dict.fromkeys(snapshot.counters.leaks_by_class, 0)
    assert snapshot.leaks == () and snapshot.checked_out == 0
    # Five holds passed the threshold and were counted as long holds instead.
    assert snapshot.counters.long_holds >= 5, holders
    assert holders["GET /stream"] == ("request", "stream-1")
    assert holders["GET /cursor"] == ("request", "cursor-1")
    assert holders["background of GET /bg"] == ("background", "bg-1")
    assert holders["WS /ws/{room}"] == ("websocket", "ws-1")
    # The scheduled job: APScheduler's worker thread, or the asyncio task by its name.
    if kind == "async":
        assert holders["nightly-report"] == ("task", None)
    else:
        assert any(route.startswith("ThreadPoolExecutor") for route in holders), holders


@pytest.mark.pool_monitor_allow(
    reason="GET /keep keeps its connection past the request (the monitored fixture closes it)",
    kinds="held_after_test",
)
def test_a_session_kept_past_its_request_is_a_leak_at_the_next_sweep(
    monitored: tuple[PoolMonitor, TestClient, list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    monitor, client, _ = monitored
    monitor.stop()  # sweeps by hand: the very next one must flag it
    with caplog.at_level(logging.INFO, logger="monitor.leaks"):
        assert client.get("/keep", headers={"x-request-id": "keep-42"}).status_code == 200
        (leak,) = monitor.tracker.sweep()
    assert leak.leak_class is LeakClass.OUTLIVED_OWNER
    assert leak.holder is not None
    assert (leak.holder.route, leak.holder.request_id) == ("GET /keep", "keep-42")
    assert leak.site, "the line that took the connection"
    (line,) = [r for r in caplog.records if "leak suspected" in r.getMessage()]
    assert "keep-42" in line.getMessage() and "outlived its owner" in line.getMessage()
    assert line.request_id == "keep-42" and line.owner == "request"  # type: ignore[attr-defined]


def test_the_background_sweep_flags_it_without_waiting_for_the_threshold(
    database_url: URL,
) -> None:
    # Threshold 60 s: only ownership can flag it within the bounded wait below.
    engine = create_engine(database_url, pool_size=2, max_overflow=0)
    monitor = PoolMonitor(engine, leak_threshold_s=60, probe=False)
    kept: list[Connection] = []
    app = sync_app(engine, kept)
    try:
        monitor.start()
        with TestClient(app) as client:
            client.get("/keep")
            assert wait_for(lambda: monitor.pool_snapshot().leaks, timeout_s=10)
            (leak,) = monitor.pool_snapshot().leaks
            assert leak.leak_class is LeakClass.OUTLIVED_OWNER
            kept.pop().close()
        assert monitor.pool_snapshot().resolved_leaks[0].how_resolved == "returned"
    finally:
        monitor.detach()
        engine.dispose()


def test_a_read_write_split_request_raises_nothing(
    database_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    write = create_engine(database_url, pool_size=2, max_overflow=0)
    read = create_engine(database_url, pool_size=2, max_overflow=0)
    monitors = [
        PoolMonitor(engine, leak_threshold_s=THRESHOLD_S, probe=False, pool_name=name)
        for engine, name in ((write, "primary"), (read, "replica"))
    ]
    app = FastAPI()
    app.add_middleware(AttributionMiddleware)

    @app.post("/orders")
    def order() -> dict[str, int]:
        with write.begin() as primary, read.connect() as replica:
            primary.execute(text("SELECT 1"))
            return {"n": replica.execute(text("SELECT 2")).scalar_one()}

    try:
        with caplog.at_level(logging.WARNING, logger="monitor.leaks"), TestClient(app) as client:
            for n in range(3):
                response = client.post("/orders", headers={"x-request-id": f"split-{n}"})
                assert response.json() == {"n": 2}
        assert caplog.records == []
        views = [monitor.view() for monitor in monitors]
        for view in views:
            assert view.pool.counters.multi_connection_requests == 0
            rule = next(r for r in view.rules if r.rule == "One session per request")
            assert rule.status == "ok", rule
        replica = views[1].pool
        assert replica.counters.multi_pool_requests == 3
        assert replica.multi_pool_requests[0].pools == ("primary", "replica")
        assert replica.multi_pool_requests[0].request_id == "split-2"
        assert "3 request(s) used several pools" in next(
            r.why for r in views[1].rules if r.rule == "One session per request"
        )
    finally:
        for monitor in monitors:
            monitor.detach()
        write.dispose()
        read.dispose()


def test_a_sync_engine_in_an_asyncio_task_is_held_by_the_task(
    engine: Engine, monitor: PoolMonitor
) -> None:
    async def report() -> str | None:
        with engine.connect() as conn:  # blocking the loop, as such code does
            conn.execute(text("SELECT 1"))
            (view,) = [c for c in monitor.pool_snapshot().connections if c.checked_out]
            return view.holder.route if view.holder else None

    async def main() -> str | None:
        return await asyncio.create_task(report(), name="report-task")

    assert asyncio.run(main()) == "report-task"


@pytest.mark.pool_monitor_allow(
    reason="GET /drop leaves a connection to the garbage collector, GET /wait times out: "
    "the log lines under test",
    kinds=("gc_reclaimed", "pool_timeout"),
)
def test_leak_resolved_reclaim_and_timeout_lines_carry_request_id_and_owner(
    engine: Engine, monitor: PoolMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    app = FastAPI()
    app.add_middleware(AttributionMiddleware)
    kept: list[Connection] = []

    @app.get("/keep")
    def keep() -> dict[str, int]:
        kept.append(engine.connect())
        return {"kept": len(kept)}

    @app.get("/drop")
    def drop() -> dict[str, str]:
        conn = engine.connect()
        cycle: dict[str, Any] = {"conn": conn}
        cycle["self"] = cycle  # only the garbage collector frees it
        del conn, cycle
        gc.collect()
        return {"dropped": "yes"}

    @app.get("/wait")
    def wait() -> dict[str, str]:
        try:
            with engine.connect():
                pass
        except sa_exc.TimeoutError:
            return {"timed_out": "yes"}
        return {"timed_out": "no"}

    with caplog.at_level(logging.INFO, logger="monitor.leaks"), TestClient(app) as client:
        for n in range(4):  # pool_size 3 + max_overflow 1: all taken
            client.get("/keep", headers={"x-request-id": f"keep-{n}"})
        assert client.get("/wait", headers={"x-request-id": "wait-1"}).json()["timed_out"] == "yes"
        monitor.tracker.sweep()
        kept.pop().close()
        kept.pop().close()
        client.get("/drop", headers={"x-request-id": "drop-1"})
        for conn in kept:
            conn.close()

    def lines(marker: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if marker in r.getMessage()]

    (timeout,) = lines("timed out")
    assert "request GET /wait [wait-1]" in timeout.getMessage()
    assert all(f"GET /keep [keep-{n}]" in timeout.getMessage() for n in range(4))
    assert timeout.request_id == "wait-1"  # type: ignore[attr-defined]
    leaks = lines("leak suspected")
    assert {r.request_id for r in leaks} == {f"keep-{n}" for n in range(4)}  # type: ignore[attr-defined]
    resolved = lines("leak resolved")
    assert len(resolved) == 4 and all(
        "request GET /keep [keep-" in r.getMessage() for r in resolved
    )
    (reclaim,) = lines("reclaimed by the garbage collector")
    assert "request GET /drop [drop-1]" in reclaim.getMessage()
    assert (reclaim.request_id, reclaim.owner) == ("drop-1", "request")  # type: ignore[attr-defined]


def test_the_commit_rule_stays_ok_under_clean_load(database_url: URL) -> None:
    engine = create_engine(database_url, pool_size=4, max_overflow=0)
    monitor = PoolMonitor(engine, leak_threshold_s=THRESHOLD_S, probe_interval_s=0.2)
    stop = threading.Event()

    def transactions() -> None:
        while not stop.is_set():
            with engine.begin() as conn:  # idle in transaction for a moment between statements
                conn.execute(text("SELECT 1"))
                time.sleep(0.005)
                conn.execute(text("SELECT pg_sleep(0.005)"))

    def commit_rule() -> tuple[str, str]:
        rule = next(r for r in monitor.view().rules if r.rule.startswith("Commit explicitly"))
        return rule.status, rule.why

    workers = [threading.Thread(target=transactions) for _ in range(4)]
    verdicts: list[tuple[str, str]] = []
    monitor.start()
    try:
        assert wait_for(lambda: monitor.server_health.snapshot().up, timeout_s=10)
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            verdicts.append(commit_rule())
            time.sleep(0.05)
        stop.set()
        for worker in workers:
            worker.join(10)
        assert len(verdicts) >= 10
        assert [v for v in verdicts if v[0] != "ok"] == []
        # The rule still sees a transaction really left open.
        with engine.connect() as conn:
            conn.execute(text("BEGIN"))
            conn.execute(text("SELECT 1"))
            assert wait_for(lambda: commit_rule()[0] != "ok", timeout_s=10)
            _, why = commit_rule()
            assert "1 held connection(s) idle in transaction for 1 s or more (oldest" in why
            conn.execute(text("ROLLBACK"))
    finally:
        stop.set()
        monitor.detach()
        engine.dispose()


def test_a_route_declares_its_long_hold(engine: Engine, monitor: PoolMonitor) -> None:
    app = FastAPI()
    app.add_middleware(AttributionMiddleware)
    seen: dict[str, Any] = {}

    @app.get("/export", dependencies=[Depends(monitor.long_hold(ceiling_s=120))])
    def export() -> dict[str, str]:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            time.sleep(0.5)  # unused past the 0.2 s threshold: fine, the route declared it
            assert monitor.tracker.sweep() == []
            seen["holds"] = monitor.pool_snapshot().long_holds
        return {"ok": "yes"}

    with TestClient(app) as client:
        assert client.get("/export").status_code == 200
    (hold,) = seen["holds"]
    assert hold.declared and hold.ceiling_s == 120
    assert hold.holder is not None and hold.holder.route == "GET /export"
    with pytest.raises(ValueError, match="ceiling_s"):
        monitor.long_hold(ceiling_s=0)
