"""SQLAlchemy behaves as without the monitor: copies, user dicts, disposal, dialect signatures,
and connections the monitor cannot read a pid from (each seen failing in SQLAlchemy's suite)."""

from __future__ import annotations

import asyncio
import copy
import inspect
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import asyncpg
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, QueuePool

from monitor.instrumentation.statements import EXECUTE_METHODS
from monitor.pool_monitor import PoolMonitor


@pytest.fixture(params=["postgresql", "sqlite"])
def any_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The same behaviour on PostgreSQL and on a file sqlite database (no backend pid there)."""
    if request.param == "sqlite":
        url: URL = make_url(f"sqlite:///{tmp_path / 'app.db'}")
    else:
        url = request.getfixturevalue("database_url")
    engine = create_engine(url, pool_size=2, max_overflow=0, poolclass=QueuePool)
    yield engine
    engine.dispose()


@pytest.fixture
def watched(any_engine: Engine) -> Iterator[PoolMonitor]:
    pool_monitor = PoolMonitor(any_engine, probe=False)
    yield pool_monitor
    pool_monitor.detach()


def checkouts(monitor: PoolMonitor) -> int:
    return monitor.pool_snapshot().counters.checkouts


def test_dispose_of_a_copy_leaves_the_original_pool(
    any_engine: Engine, watched: PoolMonitor
) -> None:
    original_pool = any_engine.pool
    clone = copy.copy(any_engine)
    clone.dispose()
    assert any_engine.pool is original_pool
    assert clone.pool is not original_pool
    before = checkouts(watched)
    with clone.connect() as conn:  # the copy's new pool is watched too
        conn.execute(text("SELECT 1"))
    with any_engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert checkouts(watched) == before + 2


def test_dispose_through_execution_options_keeps_the_pool_watched(
    any_engine: Engine, watched: PoolMonitor
) -> None:
    autocommit = any_engine.execution_options(isolation_level="AUTOCOMMIT")
    autocommit.dispose()
    before = checkouts(watched)
    for _ in range(3):
        with any_engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    with autocommit.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert checkouts(watched) == before + 4


def test_record_info_holds_only_the_users_keys(any_engine: Engine, watched: PoolMonitor) -> None:
    with any_engine.connect() as conn:
        conn.connection.record_info["mine"] = 1
        conn.execute(text("SELECT 1"))
    with any_engine.connect() as conn:
        assert conn.connection.record_info == {"mine": 1}
        conn.invalidate()  # reconnects on the next checkout of the same record
    with any_engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        assert conn.connection.record_info == {"mine": 1}
    assert watched.pool_snapshot().counters.connects == 2


def parameters(method: Any) -> list[tuple[str, Any, Any]]:
    """Names, kinds and defaults: what a caller can pass (annotations aside)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(method).parameters.values()]


def test_wrapped_dialect_execute_keeps_the_signature(
    any_engine: Engine, watched: PoolMonitor
) -> None:
    dialect: Any = any_engine.dialect
    for name in EXECUTE_METHODS:
        assert name in vars(dialect)  # the monitor's wrapper, on the instance
        assert parameters(getattr(dialect, name)) == parameters(
            getattr(type(dialect), name).__get__(dialect)
        )
    with any_engine.connect() as conn:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        dialect.do_execute_no_params(cursor, "CREATE TEMP TABLE kw (x integer)", context=None)
        dialect.do_executemany(
            cursor, "INSERT INTO kw VALUES (1)", parameters=[(), ()], context=None
        )
        dialect.do_execute(
            cursor=cursor, statement="SELECT count(*) FROM kw", parameters=(), context=None
        )
        assert cursor.fetchone()[0] == 2
        cursor.close()


def test_connection_without_a_readable_pid_is_connected_once(
    any_engine: Engine, watched: PoolMonitor
) -> None:
    with any_engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    with any_engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    counters = watched.pool_snapshot().counters
    assert counters.connects == 1
    assert counters.checkouts == 2


def test_a_mock_dbapi_connection_is_never_touched() -> None:
    """As SQLAlchemy's pool tests assert: only the pool's own calls reach the connection."""
    connection = mock.Mock()
    pool = QueuePool(lambda: connection, pool_size=1, max_overflow=0)
    engine = Engine(pool, DefaultDialect(), make_url("sqlite://"))
    monitor = PoolMonitor(engine, probe=False)
    try:
        pool.connect().close()
        pool.connect().close()
        assert connection.mock_calls == [mock.call.rollback(), mock.call.rollback()]
        assert monitor.pool_snapshot().counters.connects == 1
    finally:
        monitor.detach()
        pool.dispose()


def test_listeners_leave_an_async_pool_usable_outside_the_event_loop() -> None:
    """Without the monitor, an async pool with no `connect` listener of its own connects from
    plain sync code (SQLAlchemy's pool tests do); the monitor's listeners keep that so."""
    pool = AsyncAdaptedQueuePool(lambda: sqlite3.connect(":memory:"), pool_size=1)
    monitor = PoolMonitor(Engine(pool, DefaultDialect(), make_url("sqlite://")), probe=False)
    try:
        pool.connect().close()
        assert monitor.pool_snapshot().counters.checkouts == 1
    finally:
        monitor.detach()
        pool.dispose()


@pytest.mark.parametrize("readable", [True, False], ids=["pid", "no-pid"])
def test_asyncpg_server_pid_is_read_once_per_connection(
    database_url: URL, monkeypatch: pytest.MonkeyPatch, readable: bool
) -> None:
    calls: list[int] = []
    get_server_pid = asyncpg.Connection.get_server_pid

    def counted(self: asyncpg.Connection) -> int | None:
        calls.append(1)
        return get_server_pid(self) if readable else None

    monkeypatch.setattr(asyncpg.Connection, "get_server_pid", counted)

    async def scenario() -> None:
        engine = create_async_engine(
            database_url.set(drivername="postgresql+asyncpg"), pool_size=1, max_overflow=0
        )
        monitor = PoolMonitor(engine, probe=False)
        try:
            for _ in range(3):
                async with engine.connect() as conn:
                    pid = await conn.scalar(text("SELECT pg_backend_pid()"))
            snapshot = monitor.pool_snapshot()
            assert snapshot.counters.connects == 1
            (view,) = snapshot.connections
            assert view.pid == (pid if readable else None)
        finally:
            monitor.detach()
            await engine.dispose()

    asyncio.run(scenario())
    assert len(calls) == 1
