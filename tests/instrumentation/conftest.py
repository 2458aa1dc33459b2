from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL

from monitor.pool_monitor import PoolMonitor
from monitor.pytest_plugin import SESSION_PLUGIN


@pytest.fixture
def engine(database_url: URL) -> Iterator[Engine]:
    """A small pool with a short timeout, so exhaustion tests stay fast."""
    engine = create_engine(database_url, pool_size=3, max_overflow=1, pool_timeout=0.5)
    yield engine
    engine.dispose()


@pytest.fixture
def bare_engine(engine: Engine, request: pytest.FixtureRequest) -> Engine:
    """`engine` without the pytest plugin's monitor (this suite runs under it): for tests that
    look at what is left on the pool itself."""
    if request.config.pluginmanager.has_plugin(SESSION_PLUGIN):
        request.getfixturevalue("pool_monitor").unwatch(engine)
    return engine


@pytest.fixture
def monitor(engine: Engine) -> Iterator[PoolMonitor]:
    """Listeners attached, no background work: tests drive sweeps themselves."""
    pool_monitor = PoolMonitor(engine, leak_threshold_s=0.2, slow_query_s=0.2, probe=False)
    yield pool_monitor
    pool_monitor.detach()
