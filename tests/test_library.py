"""The library path: three lines attach the monitor to an existing app and engine."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from tests.conftest import python_in_fresh_process


def test_three_lines_on_an_existing_app(database_url: URL) -> None:
    engine = create_engine(database_url, pool_size=2)
    app = FastAPI()

    @app.get("/work")
    def work() -> dict[str, int]:
        with engine.connect() as conn:
            return {"one": conn.scalar(text("SELECT 1")) or 0}

    from monitor import PoolMonitor

    monitor = PoolMonitor(engine, leak_threshold_s=10, slow_query_s=0.5, probe_interval_s=0.2)
    monitor.install(app)

    with TestClient(app) as client:
        assert client.get("/work").json() == {"one": 1}
        snapshot = client.get("/monitor/api/snapshot").json()
        assert snapshot["pool"]["counters"]["checkouts"] >= 1
        assert client.get("/metrics").status_code == 200
        assert monitor.snapshot()["pool_stats"]["size"] == 2
    monitor.detach()
    engine.dispose()


def test_importing_the_package_starts_nothing() -> None:
    code = (
        "import threading, sys, monitor, monitor.state.tracker;"
        "assert threading.active_count() == 1, threading.enumerate();"
        "assert 'sqlalchemy' not in sys.modules and 'fastapi' not in sys.modules, 'heavy import'"
    )
    python_in_fresh_process(code)


def test_invalid_thresholds_are_refused(database_url: URL) -> None:
    import pytest

    from monitor import PoolMonitor

    engine = create_engine(database_url)
    for bad in (0, -1, float("nan"), "5"):
        with pytest.raises(ValueError, match="leak_threshold_s"):
            PoolMonitor(engine, leak_threshold_s=bad)  # type: ignore[arg-type]
    engine.dispose()
