"""Honest degraded states: a refused privilege is named, hidden sessions make counts incomplete.

Each test creates a role without pg_monitor (and, for the CONNECT case, a database it may not
connect to) and drops them afterwards.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from monitor.app import create_app
from monitor.settings import Settings
from monitor.state.visibility import visibility
from tests.conftest import url_string

from .conftest import ProbeFactory


@pytest.fixture
def limited_role(admin_engine: Engine) -> Iterator[str]:
    """A login role that is not a member of pg_monitor or pg_read_all_stats."""
    role = f"pm_limited_{uuid.uuid4().hex[:8]}"
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
    yield role
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP OWNED BY "{role}"'))
        conn.execute(text(f'DROP ROLE "{role}"'))


def test_without_pg_monitor_the_snapshot_says_which_counts_are_incomplete(
    database_url: URL, admin_engine: Engine, limited_role: str, make_probe: ProbeFactory
) -> None:
    probe = make_probe(database_url.set(username=limited_role, password=None))
    with admin_engine.connect() as other_role:  # a session of another role, in a transaction
        other_role.exec_driver_sql("BEGIN")
        other_role.exec_driver_sql("SELECT 1")
        probe.run_once()
        other_role.exec_driver_sql("ROLLBACK")
    health = probe.health.snapshot()
    assert health.up is True, health.last_error
    assert health.hidden_queries >= 1
    seen = visibility(health)
    assert seen["complete"] is False and seen["hidden_sessions"] == health.hidden_queries
    assert "idle-in-transaction sessions" in seen["incomplete_counts"]  # type: ignore[operator]
    assert "blocked and blocking sessions" in seen["incomplete_counts"]  # type: ignore[operator]
    assert "pg_read_all_stats" in str(seen["needs"])


def test_with_full_visibility_nothing_is_flagged(
    database_url: URL, make_probe: ProbeFactory
) -> None:
    probe = make_probe(database_url)  # the test's own (superuser) role sees every session
    probe.run_once()
    seen = visibility(probe.health.snapshot())
    assert seen == {"hidden_sessions": 0, "complete": True, "incomplete_counts": [], "needs": None}


def test_the_dashboard_and_snapshot_of_a_limited_role_say_it(
    schema_url: URL, admin_engine: Engine, limited_role: str
) -> None:
    from fastapi.testclient import TestClient

    schema = dict(schema_url.query)["options"].split("=", 1)[1]
    with admin_engine.connect() as conn:
        conn.execute(text(f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO "{limited_role}"'))
    url = schema_url.set(username=limited_role, password=None)
    settings = Settings(database_url=url_string(url), probe_interval_s=0.2)
    with admin_engine.connect() as other_role:
        other_role.exec_driver_sql("BEGIN")  # another role's session, idle in transaction
        other_role.exec_driver_sql("SELECT 1")
        with TestClient(create_app(settings)) as client:
            from tests.servers import wait_for

            def flagged() -> bool:
                data = client.get("/monitor/api/snapshot").json()
                return data["server_visibility"]["complete"] is False

            assert wait_for(flagged, 30), "the snapshot never said the counts are incomplete"
            page = client.get("/monitor/partials/probe").text
            assert "hidden from the probe" in page and "pg_read_all_stats" in page


def test_a_refused_connect_names_the_privilege(
    database_url: URL,
    admin_engine: Engine,
    limited_role: str,
    make_probe: ProbeFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    database = f"pm_noconnect_{uuid.uuid4().hex[:8]}"
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{database}"'))
        conn.execute(text(f'REVOKE CONNECT ON DATABASE "{database}" FROM PUBLIC'))
    try:
        probe = make_probe(database_url.set(username=limited_role, database=database))
        with caplog.at_level(logging.WARNING, logger="monitor.probes.runner"):
            probe.run_once()
        health = probe.health.snapshot()
        assert health.up is False
        assert health.last_error is not None
        assert "needs CONNECT on the database" in health.last_error, health.last_error
        assert "lacks CONNECT on the database" in caplog.text
        assert "unreachable" not in caplog.text
        probe.close()
    finally:
        with admin_engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


def test_startup_without_create_on_the_schema_says_so(
    schema_url: URL, limited_role: str, caplog: pytest.LogCaptureFixture
) -> None:
    from fastapi.testclient import TestClient

    url = schema_url.set(username=limited_role, password=None)  # no CREATE on the schema
    settings = Settings(database_url=url_string(url), probe_interval_s=5)
    with caplog.at_level(logging.WARNING), TestClient(create_app(settings)):
        pass
    assert "permission denied creating the demo tables" in caplog.text
    assert "needs USAGE and CREATE on the schema" in caplog.text
    assert "database not reachable" not in caplog.text
