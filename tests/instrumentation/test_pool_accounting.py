"""The monitor's count of checked-out connections agrees with the pool's at every instant: the
drift gauge stays 0 while overflow connections are opened (slowly) and closed all the time."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from monitor.pool_monitor import PoolMonitor

CHURN_S = 2.5
CONNECT_DELAY_S = 0.03  # a slow connect: the window in which the pool counts and we did not
WORKERS = 8


def slow_connects(sync_engine: Any) -> None:
    def connect(dbapi_connection: Any, record: Any) -> None:
        time.sleep(CONNECT_DELAY_S)

    event.listen(sync_engine, "connect", connect)


def sample_drift(monitor: PoolMonitor, running: Callable[[], bool]) -> list[int]:
    """The drift as a scrape reads it, every few milliseconds while the churn runs."""
    samples: list[int] = []
    while running():
        samples.append(monitor.view(detail=False).drift)
        time.sleep(0.005)
    return samples


def assert_churned_without_drift(monitor: PoolMonitor, samples: list[int]) -> None:
    counters = monitor.pool_snapshot().counters
    # Overflow connections were opened and closed over and over (pool_size 2).
    assert counters.connects > 10 and counters.closes > 8, counters
    assert counters.listener_errors == 0
    assert len(samples) >= 20
    assert [s for s in samples if s != 0] == []
    assert monitor.view().drift == 0 == monitor.pool_stats().checked_out


def test_no_drift_under_sync_overflow_churn(database_url: URL) -> None:
    engine = create_engine(database_url, pool_size=2, max_overflow=6, pool_timeout=10)
    slow_connects(engine)
    monitor = PoolMonitor(engine, leak_threshold_s=30, probe=False)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            time.sleep(random.uniform(0, 0.02))  # demand comes and goes: overflow opens, closes

    workers = [threading.Thread(target=churn) for _ in range(WORKERS)]
    try:
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + CHURN_S
        samples = sample_drift(monitor, lambda: time.monotonic() < deadline)
        stop.set()
        for worker in workers:
            worker.join(10)
        assert_churned_without_drift(monitor, samples)
    finally:
        stop.set()
        monitor.detach()
        engine.dispose()


def test_no_drift_under_async_overflow_churn(database_url: URL) -> None:
    engine = create_async_engine(
        database_url.set(drivername="postgresql+asyncpg"),
        pool_size=2,
        max_overflow=6,
        pool_timeout=10,
    )
    slow_connects(engine.sync_engine)
    monitor = PoolMonitor(engine, leak_threshold_s=30, probe=False)
    done = threading.Event()
    samples: list[int] = []

    async def churn() -> None:
        deadline = time.monotonic() + CHURN_S
        while time.monotonic() < deadline:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            await asyncio.sleep(random.uniform(0, 0.02))

    async def main() -> None:
        sampler = threading.Thread(
            target=lambda: samples.extend(sample_drift(monitor, lambda: not done.is_set()))
        )
        sampler.start()
        try:
            await asyncio.gather(*(churn() for _ in range(WORKERS)))
        finally:
            done.set()
            await asyncio.to_thread(sampler.join, 10)
        assert_churned_without_drift(monitor, samples)
        await engine.dispose()

    try:
        asyncio.run(main())
    finally:
        monitor.detach()


@pytest.mark.parametrize("broken", ["checkout", "checkin"])
def test_a_real_accounting_error_still_shows(database_url: URL, broken: str) -> None:
    # Without this the test above would pass with a drift that always reads 0.
    engine = create_engine(database_url, pool_size=2, max_overflow=0)
    monitor = PoolMonitor(engine, leak_threshold_s=30, probe=False)
    try:
        conn = engine.connect()
        (slot,) = list(monitor.tracker._open.values())
        holding = slot.holding
        if broken == "checkout":
            slot.holding = None  # the monitor lost a checkout
            assert monitor.view().drift == -1
            slot.holding = holding
        else:
            monitor.tracker.returning.append(None)  # the monitor counts one the pool does not
            assert monitor.view().drift == 1
            monitor.tracker.returning.pop()
        assert monitor.view().drift == 0
        conn.close()
    finally:
        monitor.detach()
        engine.dispose()
