"""The same monitor on an AsyncEngine (asyncpg): checkouts, holders, leaks and timeouts."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from monitor.pool_monitor import PoolMonitor


def test_async_engine_is_tracked(database_url: URL) -> None:
    async def scenario() -> None:
        engine = create_async_engine(
            database_url.set(drivername="postgresql+asyncpg"),
            pool_size=2,
            max_overflow=0,
            pool_timeout=0.3,
        )
        monitor = PoolMonitor(engine, leak_threshold_s=0.1, probe=False)
        try:
            async with engine.connect() as conn:
                pid = await conn.scalar(text("SELECT pg_backend_pid()"))
                snapshot = monitor.pool_snapshot()
                (view,) = [c for c in snapshot.connections if c.checked_out]
                assert view.pid == pid
                assert view.holder is not None and view.holder.kind == "task"
                assert view.site and view.site[0].filename == __file__
                time.sleep(0.15)
                (leak,) = monitor.tracker.sweep()
                assert leak.slot_id == view.slot_id

                async with engine.connect() as second:
                    await second.execute(text("SELECT 1"))
                    with pytest.raises(sa_exc.TimeoutError):
                        async with engine.connect():
                            pass
            snapshot = monitor.pool_snapshot()
            assert snapshot.checked_out == 0 == monitor.pool_stats().checked_out
            assert snapshot.counters.timeouts == 1
            assert snapshot.resolved_leaks[0].how_resolved == "returned"
            assert snapshot.counters.listener_errors == 0
        finally:
            monitor.detach()
            await engine.dispose()

    asyncio.run(scenario())


def test_async_waiters_are_counted_and_failed_statements_too(database_url: URL) -> None:
    async def scenario() -> None:
        engine = create_async_engine(
            database_url.set(drivername="postgresql+asyncpg"), pool_size=1, max_overflow=0
        )
        monitor = PoolMonitor(engine, probe=False)
        try:
            async with engine.connect() as held:
                with pytest.raises(sa_exc.DBAPIError, match="division by zero"):
                    await held.execute(text("SELECT 1 / 0"))
                waiters = [asyncio.create_task(_use(engine)) for _ in range(3)]
                for _ in range(100):  # bounded: at most 1 s
                    if monitor.pool_snapshot().pending_requests == 3:
                        break
                    await asyncio.sleep(0.01)
                assert monitor.pool_snapshot().pending_requests == 3
            await asyncio.wait_for(asyncio.gather(*waiters), timeout=5)
            snapshot = monitor.pool_snapshot()
            assert snapshot.pending_requests == 0 and snapshot.checked_out == 0
            assert snapshot.counters.statement_errors == 1
            assert snapshot.counters.listener_errors == 0
        finally:
            monitor.detach()
            await engine.dispose()

    asyncio.run(scenario())


async def _use(engine: Any) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


def test_async_connection_reclaimed_by_the_garbage_collector_is_counted(database_url: URL) -> None:
    async def leak(engine: Any) -> None:
        conn = await engine.connect()
        await conn.execute(text("SELECT 1"))
        # dropped without close(): SQLAlchemy detaches and terminates it on collection

    async def scenario() -> None:
        engine = create_async_engine(database_url.set(drivername="postgresql+asyncpg"), pool_size=2)
        monitor = PoolMonitor(engine, probe=False)
        try:
            with pytest.warns(Warning, match="garbage collector is trying to clean up"):
                await leak(engine)
                gc.collect()
            snapshot = monitor.pool_snapshot()
            assert snapshot.counters.gc_reclaimed == 1
            assert (
                snapshot.gc_reclaims[0].site and snapshot.gc_reclaims[0].site[0].function == "leak"
            )
            assert snapshot.checked_out == 0 and snapshot.counters.listener_errors == 0
        finally:
            monitor.detach()
            await engine.dispose()

    asyncio.run(scenario())
