"""The plugin inside the apps tests are written for: FastAPI routes called through TestClient,
async engines, and the `pool_monitor` fixture."""

from __future__ import annotations

import json

import pytest
from sqlalchemy.engine import URL

from tests.conftest import url_string

pytestmark = pytest.mark.slow

APP_TESTS = """
import os

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

engine = create_engine(os.environ["PM_SUITE_URL"], pool_size=4, max_overflow=0)
app = FastAPI()
KEPT = []


@app.get("/items/{item_id}", tags=["items"])
def read_item(item_id: int):
    first = Session(engine)
    first.execute(text("SELECT 1"))
    with Session(engine) as second:  # a second connection of the same pool, same request
        second.execute(text("SELECT 2"))
    KEPT.append(first)  # never closed: outlives the request
    return {"id": item_id}


def test_request_leaks():
    with TestClient(app) as client:
        assert client.get("/items/1", headers={"X-Request-ID": "req-42"}).status_code == 200


def test_fixture_sees_the_pools(pool_monitor):
    before = pool_monitor.checked_out()
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        assert pool_monitor.checked_out() == before + 1
    assert [s.pool_name for s in pool_monitor.snapshots()]
"""

ASYNC_TESTS = """
import asyncio
import os

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

engine = create_async_engine(os.environ["PM_SUITE_ASYNC_URL"], pool_size=2, max_overflow=0)
KEPT = []


def test_async_leak():
    async def leak():
        conn = await engine.connect()
        await conn.execute(text("SELECT 1"))
        KEPT.append(conn)

    asyncio.run(leak())


def test_async_clean():
    async def clean():
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    asyncio.run(clean())
"""


def run(pytester: pytest.Pytester, name: str) -> tuple[pytest.RunResult, list[dict]]:
    report = pytester.path / "report.json"
    result = pytester.runpytest_subprocess(
        "--pool-monitor=fail", f"--pool-monitor-report={report}", name
    )
    return result, json.loads(report.read_text())["findings"]


def test_a_request_that_leaks_names_its_route_and_request(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_app=APP_TESTS)
    result, findings = run(suite, "test_app.py")

    result.assert_outcomes(passed=1, failed=1)
    kinds = sorted(f["kind"] for f in findings)
    assert kinds == ["held_after_test", "multi_connection_request"], findings
    for finding in findings:
        assert finding["owner"]["name"] == "test_app.py::test_request_leaks"
        assert finding["route"] == "GET /items/{item_id}"
        assert finding["request_id"] == "req-42"
    held = next(f for f in findings if f["kind"] == "held_after_test")
    assert held["site"][0].split(" in ")[0].endswith("test_app.py:16")  # first.execute


def test_async_engines_are_watched(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setenv(
        "PM_SUITE_ASYNC_URL", os.environ["PM_SUITE_URL"].replace("+psycopg2", "+asyncpg", 1)
    )
    suite.makepyfile(test_async=ASYNC_TESTS)
    result, findings = run(suite, "test_async.py")

    result.assert_outcomes(passed=1, failed=1)
    assert [(f["owner"]["name"], f["kind"]) for f in findings] == [
        ("test_async.py::test_async_leak", "held_after_test")
    ]
    assert findings[0]["site"][0].split(" in ")[0].endswith("test_async.py:13")  # engine.connect()


MONITORED_APP_TESTS = """
import os

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from monitor import PoolMonitor

engine = create_engine(os.environ["PM_SUITE_URL"], pool_size=4, max_overflow=0)
app = FastAPI()
monitor = PoolMonitor(engine, probe=False)
monitor.install(app)
KEPT = []


@app.get("/keep")
def keep():
    session = Session(engine)
    session.execute(text("SELECT 1"))
    KEPT.append(session)
    return {}


def test_leak_through_a_monitored_app():
    with TestClient(app) as client:
        assert client.get("/keep").status_code == 200


def test_the_app_monitor_counts_once():
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert monitor.snapshot()["pool"]["counters"]["multi_connection_requests"] == 0
    monitor.detach()  # the plugin's own monitor takes the engine back
    conn = engine.connect()
    KEPT.append(conn)
"""


def test_an_app_with_its_own_monitor_is_followed_not_doubled(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_monitored=MONITORED_APP_TESTS)
    result, findings = run(suite, "test_monitored.py")

    result.assert_outcomes(failed=2)
    assert [(f["owner"]["name"], f["kind"], f["route"]) for f in findings] == [
        ("test_monitored.py::test_leak_through_a_monitored_app", "held_after_test", "GET /keep"),
        ("test_monitored.py::test_the_app_monitor_counts_once", "held_after_test", None),
    ]


PLUMBING_TESTS = """
import os

from fastapi.testclient import TestClient

from monitor.app import create_app
from monitor.settings import Settings


def test_the_monitors_own_engines_are_not_watched(pool_monitor):
    before = len(pool_monitor.snapshots())
    app = create_app(Settings(database_url=os.environ["PM_APP_URL"], probe_interval_s=0.5))
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        # The app's engine only: not its readiness engine, not its monitor's server probe.
        assert len(pool_monitor.snapshots()) == before + 1
        assert app.state.pool_monitor.pool_name in [s.pool_name for s in pool_monitor.snapshots()]
"""


def test_the_app_monitors_probe_and_readiness_engines_are_left_alone(
    suite: pytest.Pytester, schema_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PM_APP_URL", url_string(schema_url))
    suite.makepyfile(test_plumbing=PLUMBING_TESTS)
    result, findings = run(suite, "test_plumbing.py")

    result.assert_outcomes(passed=1)
    assert findings == []
