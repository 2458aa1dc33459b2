from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL

from monitor.pool_monitor import PoolMonitor


@pytest.fixture
def engine(database_url: URL) -> Iterator[Engine]:
    """A small pool with a short timeout, so exhaustion tests stay fast."""
    engine = create_engine(database_url, pool_size=3, max_overflow=1, pool_timeout=0.5)
    yield engine
    engine.dispose()


@pytest.fixture
def monitor(engine: Engine) -> Iterator[PoolMonitor]:
    """Listeners attached, no background work: tests drive sweeps themselves."""
    pool_monitor = PoolMonitor(engine, leak_threshold_s=0.2, slow_query_s=0.2, probe=False)
    yield pool_monitor
    pool_monitor.detach()
