"""Several engines, one monitor surface: a sync primary and an async replica on one dashboard,
one /metrics, one snapshot, one middleware, one probe per database URL."""

from __future__ import annotations

import asyncio
import gc
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from monitor import PoolMonitor
from monitor.instrumentation import pools_seen
from monitor.instrumentation.attribution import AttributionMiddleware
from monitor.metrics import names
from tests.servers import wait_for

# Both pools of the app under one application_name, as an app sets it: each pool must not count
# the other's sessions as orphans (and other processes on a shared server stay out of it).
APPLICATION_NAME = f"pm-multi-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def primary(database_url: URL) -> Iterator[Engine]:
    engine = create_engine(
        database_url,
        pool_size=2,
        max_overflow=1,
        connect_args={"application_name": APPLICATION_NAME},
    )
    yield engine
    engine.dispose()


@pytest.fixture
def replica(database_url: URL) -> Iterator[AsyncEngine]:
    engine = create_async_engine(
        database_url.set(drivername="postgresql+asyncpg"),
        pool_size=3,
        max_overflow=0,
        connect_args={"server_settings": {"application_name": APPLICATION_NAME}},
    )
    yield engine
    asyncio.run(engine.dispose())


def _two_engine_app(primary: Engine, replica: AsyncEngine) -> tuple[FastAPI, threading.Event]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await replica.dispose()  # on the loop its connections belong to

    app = FastAPI(lifespan=lifespan)
    release = threading.Event()

    @app.get("/write")
    def write() -> dict[str, int]:
        with primary.connect() as conn:
            return {"one": conn.scalar(text("SELECT 1")) or 0}

    @app.get("/read")
    async def read() -> dict[str, int]:
        async with replica.connect() as conn:
            return {"two": await conn.scalar(text("SELECT 2")) or 0}

    @app.get("/both")
    async def both() -> dict[str, int]:
        # Read the replica while the write connection is open: one connection of each pool.
        with primary.connect() as conn:
            conn.execute(text("SELECT 1"))
            async with replica.connect() as read:
                return {"two": await read.scalar(text("SELECT 2")) or 0}

    @app.get("/twice")
    def twice() -> dict[str, int]:
        with primary.connect() as first, primary.connect() as second:
            first.execute(text("SELECT 1"))
            return {"one": second.scalar(text("SELECT 1")) or 0}

    @app.get("/hold-replica")
    async def hold_replica() -> dict[str, bool]:
        async with replica.connect() as conn:
            await conn.execute(text("SELECT 1"))
            await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        return {"held": True}

    return app, release


def _samples(body: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_two_engines_one_surface(primary: Engine, replica: AsyncEngine) -> None:
    # "One engine per app" counts the live pools of the process: those earlier tests left
    # behind (FastAPI caches their apps' endpoints and the engines these use; reference cycles
    # wait for the collector) are not this app's.
    ours = {primary.pool, replica.sync_engine.pool}
    with pools_seen._lock:
        others = [pool for pool in pools_seen._pools if pool not in ours]
    for pool in others:
        pools_seen.ignore_pool(pool)
    app, release = _two_engine_app(primary, replica)
    monitor = PoolMonitor(primary, leak_threshold_s=10, probe_interval_s=0.2)
    monitor.add_engine(replica, pool_name="replica", role="replica")
    monitor.install(app)
    database = primary.url.database
    assert [p.name for p in monitor.pools] == [database, "replica"]

    with TestClient(app) as client:
        assert client.get("/write").json() == {"one": 1}
        assert client.get("/read").json() == {"two": 2}
        holder = threading.Thread(target=client.get, args=("/hold-replica",))
        holder.start()
        try:
            assert wait_for(lambda: monitor.view(pool="replica").pool_stats.checked_out == 1, 10)
            body = client.get("/metrics").text
            # One family per name (valid exposition), every pool in it by its pool label.
            assert body.count(f"# TYPE {names.CONNECTION_COUNT} gauge") == 1
            used = {
                dict(labels)[names.POOL_NAME]: value
                for labels, value in _samples(body, names.CONNECTION_COUNT).items()
                if dict(labels)[names.STATE] == names.STATE_USED
            }
            assert used == {database: 0, "replica": 1}
            maxima = {
                dict(k)[names.POOL_NAME]: v for k, v in _samples(body, names.CONNECTION_MAX).items()
            }
            assert maxima == {database: 3, "replica": 3}
            # The dashboard switches between the pools; the replica's held connection shows.
            page = client.get("/monitor/?pool=replica").text
            assert "?pool=replica" in page and f"?pool={database}" in page
            assert "1 of 3 connection(s) checked out" in page
            assert "No pool of that name" in client.get("/monitor/partials/held?pool=x").text
        finally:
            release.set()
            holder.join(15)

        snapshot = client.get("/monitor/api/snapshot").json()
        assert [p["pool"]["pool_name"] for p in snapshot["pools"]] == [database, "replica"]
        assert snapshot["pool"]["pool_name"] == database  # the one-engine shape stays
        replica_view = snapshot["pools"][1]
        assert replica_view["pool"]["counters"]["checkouts"] >= 2
        assert replica_view["app"]["role"] == "replica"
        # A declared replica is not a second engine by mistake; no pool counts the other's
        # sessions as orphans of its own.
        assert wait_for(lambda: monitor.view().server.up is True, 10)
        # Engines earlier tests dropped wait in SQLAlchemy's own reference cycles for the
        # collector, counted as pools of this process until it runs: not this test's subject.
        gc.collect()
        for view in monitor.views():
            rules = {r.rule: r for r in view.rules}
            assert rules["One engine per app"].status == "ok", rules["One engine per app"].why
            assert view.orphans == ()
        # One server URL, one probe.
        assert list(monitor._background._probes) == ["server-probe"]

    assert [m.cls for m in app.user_middleware].count(AttributionMiddleware) == 1
    monitor.detach()


def test_a_second_monitor_installed_joins_the_first(primary: Engine, replica: AsyncEngine) -> None:
    app, release = _two_engine_app(primary, replica)
    release.set()
    first = PoolMonitor(primary, probe=False)
    first.install(app)
    second = PoolMonitor(replica, role="replica", probe=False)
    second.install(app)  # the old behaviour: replaced the first everywhere, doubled middleware
    assert app.state.pool_monitor is first
    assert [p.name for p in first.pools] == [
        primary.url.database,
        f"{primary.url.database}-replica",
    ]
    with TestClient(app) as client:
        client.get("/read")
        body = client.get("/metrics").text
        checkouts = _samples(body, names.CHECKOUTS_TOTAL)
        assert len(checkouts) == 2
    assert [m.cls for m in app.user_middleware].count(AttributionMiddleware) == 1
    second.detach()
    assert [p.name for p in first.pools] == [primary.url.database]
    first.detach()


def test_one_connection_per_pool_is_not_several_sessions(
    primary: Engine, replica: AsyncEngine
) -> None:
    app, release = _two_engine_app(primary, replica)
    release.set()
    monitor = PoolMonitor(primary, probe=False)
    monitor.add_engine(replica, pool_name="replica", role="replica")
    monitor.install(app)
    with TestClient(app) as client:
        assert client.get("/both").json() == {"two": 2}
        assert [v.pool.counters.multi_connection_requests for v in monitor.views()] == [0, 0]
        assert client.get("/twice").json() == {"one": 1}
        assert [v.pool.counters.multi_connection_requests for v in monitor.views()] == [1, 0]
        (flagged,) = monitor.view().pool.multi_connection_requests
        assert flagged.route == "GET /twice" and flagged.connections == 2
    monitor.detach()


def test_pool_names_are_unique_and_engines_watched_once(primary: Engine, database_url: URL) -> None:
    other = create_engine(database_url)
    monitor = PoolMonitor(primary, pool_name="main", probe=False)
    try:
        with pytest.raises(ValueError, match="taken"):
            monitor.add_engine(other, pool_name="main")
        with pytest.raises(ValueError, match="watched already"):
            monitor.add_engine(primary)
        assert monitor.add_engine(other).name == f"{database_url.database}-replica"
    finally:
        monitor.detach()
        other.dispose()


def test_one_probe_per_database_url(primary: Engine, database_url: URL) -> None:
    # A second database on the same server is a second URL: its own probe.
    name = f"pm_second_{uuid.uuid4().hex[:8]}"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    second = create_engine(database_url.set(database=name))
    same = create_engine(database_url)
    monitor = PoolMonitor(primary, probe_interval_s=0.2)
    monitor.add_engine(same, role="reports")
    monitor.add_engine(second, role="analytics")
    monitor.start()
    try:
        assert sorted(monitor._background._probes) == ["server-probe", "server-probe-2"]
        assert wait_for(lambda: all(v.server.up for v in monitor.views()), 15)
        databases = {v.pool.pool_name: v.server.last_sample.database for v in monitor.views()}
        assert databases == {
            database_url.database: database_url.database,
            f"{database_url.database}-reports": database_url.database,
            f"{name}-analytics": name,
        }
    finally:
        monitor.detach()
        second.dispose()
        same.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_otel_instruments_cover_every_pool(primary: Engine, database_url: URL) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from monitor.metrics import otel

    unlimited = create_engine(database_url, pool_size=1, max_overflow=-1)
    monitor = PoolMonitor(primary, probe=False)
    monitor.add_engine(unlimited, pool_name="reports", role="reports")
    reader = InMemoryMetricReader()
    otel.PoolInstruments(lambda: monitor).register(MeterProvider([reader]).get_meter("test"))
    try:
        with unlimited.connect() as conn:
            conn.execute(text("SELECT 1"))
            data = reader.get_metrics_data()
        points: dict[str, dict[str, float]] = {}
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        attributes = dict(point.attributes or {})
                        if attributes.get(otel.STATE, "used") == "used":
                            pool = str(attributes[otel.POOL_NAME])
                            points.setdefault(metric.name, {})[pool] = getattr(point, "value", 0)
        assert points["db.client.connection.count"] == {primary.url.database: 0, "reports": 1}
        # The unlimited pool reports no maximum rather than a false one.
        assert points["db.client.connection.max"] == {primary.url.database: 3}
    finally:
        monitor.detach()
        unlimited.dispose()
