"""Metrics fixtures: a fresh registry over the running app's monitor, held connections, polling."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

import psycopg2
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL

from monitor.metrics import names
from monitor.metrics.collector import MonitorCollector
from monitor.pool_monitor import PoolMonitor
from tests.conftest import url_string

T = TypeVar("T")

POOL = "app"  # pool_logging_name of the demo app's engine
POOL_LABELS = {names.POOL_NAME: POOL}  # the pool label of every pool-side series
OUTSIDE_APPLICATION = "pool-monitor-test-outside"


def wait_for(read: Callable[[], T], done: Callable[[T], bool], timeout_s: float = 10.0) -> T:
    """Polls `read()` until `done(value)`; fails with the last value after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s; last value: {value!r}")
        time.sleep(0.05)


@pytest.fixture
def monitor(client: TestClient) -> PoolMonitor:
    pool_monitor: PoolMonitor = client.app.state.pool_monitor  # type: ignore[attr-defined]
    return pool_monitor


@pytest.fixture
def engine(client: TestClient) -> Engine:
    app_engine: Engine = client.app.state.engine  # type: ignore[attr-defined]
    return app_engine


@pytest.fixture
def registry(monitor: PoolMonitor) -> CollectorRegistry:
    """A registry of this test only: the app's and the global one stay untouched."""
    fresh = CollectorRegistry(auto_describe=False)
    fresh.register(MonitorCollector(lambda: monitor))
    return fresh


@pytest.fixture
def sample(registry: CollectorRegistry) -> Callable[..., float | None]:
    """`sample(name, **labels)`: one value of the current scrape, None when not exposed."""

    def read(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    return read


@pytest.fixture
def wait_probed(monitor: PoolMonitor) -> Callable[[], None]:
    """Waits for a probe that finished after this call (the test app probes every 0.5 s)."""

    def wait() -> None:
        before = monitor.server_health.snapshot().probes_total
        wait_for(
            monitor.server_health.snapshot,
            lambda health: health.probes_total > before and health.up is True,
        )

    return wait


@contextmanager
def holding(
    engine: Engine, count: int, *, in_transaction: bool = False
) -> Iterator[list[Connection]]:
    """Checks out `count` connections of the pool and returns them on exit, whatever happens."""
    with ExitStack() as stack:
        connections = [stack.enter_context(engine.connect()) for _ in range(count)]
        if in_transaction:
            for connection in connections:
                connection.execute(
                    text("SELECT 1")
                )  # autobegin: the session is idle in transaction
        yield connections


@pytest.fixture
def outside_session(database_url: URL) -> Iterator[Any]:
    """A psycopg2 session outside the app's pool, left idle in transaction."""
    connection = psycopg2.connect(
        url_string(database_url.set(drivername="postgresql")),
        application_name=OUTSIDE_APPLICATION,
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")  # psycopg2 opens a transaction and leaves it open
        yield connection
    finally:
        connection.rollback()
        connection.close()
