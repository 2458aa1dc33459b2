"""Every SQLAlchemy pool class is measured: used = connections really checked out, no drift, no
false maximum ("1 of 0"), and unlimited overflow exposes no maximum to alert on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import (
    AssertionPool,
    NullPool,
    Pool,
    QueuePool,
    SingletonThreadPool,
    StaticPool,
)

from monitor import PoolMonitor
from monitor.metrics import names
from monitor.metrics.collector import MonitorCollector

# class, connections held at once in the test, the maximum /metrics must show (None: no series)
CASES: list[tuple[type[Pool], int, int | None]] = [
    (QueuePool, 2, 15),
    (NullPool, 2, None),
    (StaticPool, 1, 1),
    (SingletonThreadPool, 1, None),
    (AssertionPool, 1, 1),
]


def _registry(monitor: PoolMonitor) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(lambda: monitor))
    return registry


def _held_panel(monitor: PoolMonitor) -> str:
    app = FastAPI()
    monitor.install(app)
    with TestClient(app) as client:
        return client.get("/monitor/partials/held").text


@pytest.fixture
def make_engine(database_url: URL) -> Iterator[object]:
    made: list[Engine] = []

    def make(poolclass: type[Pool], **kwargs: object) -> Engine:
        engine = create_engine(database_url, poolclass=poolclass, **kwargs)  # type: ignore[arg-type]
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.dispose()


@pytest.mark.parametrize(
    ("poolclass", "held", "maximum"), CASES, ids=lambda c: getattr(c, "__name__", None)
)
def test_each_pool_class_is_measured(
    make_engine: object, poolclass: type[Pool], held: int, maximum: int | None
) -> None:
    engine: Engine = make_engine(poolclass)  # type: ignore[operator]
    monitor = PoolMonitor(engine, probe=False)
    registry = _registry(monitor)
    used = {names.POOL_NAME: monitor.pool_name, names.STATE: names.STATE_USED}
    try:
        with ExitStack() as stack:
            for _ in range(held):
                conn = stack.enter_context(engine.connect())
                conn.execute(text("SELECT 1"))
            view = monitor.view()
            assert view.pool_stats.checked_out == held == view.pool.checked_out
            assert view.drift == 0
            assert registry.get_sample_value(names.CONNECTION_COUNT, used) == held
            assert (
                registry.get_sample_value(
                    names.ACCOUNTING_DRIFT, {names.POOL_NAME: monitor.pool_name}
                )
                == 0
            )
            exposed_max = registry.get_sample_value(
                names.CONNECTION_MAX, {names.POOL_NAME: monitor.pool_name}
            )
            assert exposed_max == maximum
            panel = _held_panel(monitor)
            assert " of 0 " not in panel
            assert (
                f"{held} of {maximum} connection(s)" in panel
                if maximum is not None
                else f"{held} connection(s) checked out (no maximum" in panel
            )
        view = monitor.view()
        assert view.pool_stats.checked_out == 0 == view.pool.checked_out
        assert view.drift == 0
        assert view.pool.counters.listener_errors == 0
        assert view.pool.counters.checkouts >= held
    finally:
        monitor.detach()


def test_async_adapted_queue_pool_is_measured(database_url: URL) -> None:
    async def scenario() -> None:
        engine = create_async_engine(
            database_url.set(drivername="postgresql+asyncpg"), pool_size=2, max_overflow=1
        )
        monitor = PoolMonitor(engine, probe=False)
        try:
            async with engine.connect() as first, engine.connect() as second:
                await first.execute(text("SELECT 1"))
                await second.execute(text("SELECT 1"))
                view = monitor.view()
                assert view.pool_stats.pool_class == "AsyncAdaptedQueuePool"
                assert view.pool_stats.checked_out == 2 == view.pool.checked_out
                assert view.pool_stats.max_connections == 3 and not view.pool_stats.unbounded
            view = monitor.view()
            assert view.pool_stats.checked_out == 0 and view.drift == 0
        finally:
            monitor.detach()
            await engine.dispose()

    asyncio.run(scenario())


def test_unlimited_overflow_has_no_false_maximum(make_engine: object) -> None:
    engine: Engine = make_engine(QueuePool, pool_size=1, max_overflow=-1)  # type: ignore[operator]
    monitor = PoolMonitor(engine, probe=False)
    registry = _registry(monitor)
    label = {names.POOL_NAME: monitor.pool_name}
    try:
        with ExitStack() as stack:
            for _ in range(3):  # past pool_size: used/max would read 3.0 and fire saturation
                stack.enter_context(engine.connect()).execute(text("SELECT 1"))
            stats = monitor.pool_stats()
            assert stats.unbounded and stats.checked_out == 3
            assert registry.get_sample_value(names.CONNECTION_MAX, label) is None
            used = registry.get_sample_value(
                names.CONNECTION_COUNT, {**label, names.STATE: names.STATE_USED}
            )
            assert used == 3
            rules = {r.rule: r for r in monitor.view().rules}
            assert rules["Use the pool"].status == "warn"
            assert "no maximum" in rules["Use the pool"].why
            assert "3 connection(s) checked out (no maximum: max_overflow -1" in _held_panel(
                monitor
            )
    finally:
        monitor.detach()
