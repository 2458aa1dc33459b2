"""pg_stat_activity probe: row parsing, and what it sees of real sessions."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import URL

from monitor.probes.activity import (
    QUERY_MAX_CHARS,
    fetch_activity,
    parse_activity,
    parse_backend,
)
from monitor.state.server import HIDDEN_QUERY, Backend, blocked_sessions

from .conftest import ProbeFactory

FULL_ROW = {
    "pid": 4242,
    "datname": "app",
    "usename": "app_user",
    "application_name": "web:1234",
    "client_addr": "10.1.2.3",
    "backend_type": "client backend",
    "state": "idle in transaction",
    "wait_event_type": "Client",
    "wait_event": "ClientRead",
    "backend_age_s": 120.5,
    "xact_age_s": 31.25,
    "query_age_s": 30.0,
    "state_age_s": 29.5,
    "query": "UPDATE accounts SET api_key = 'sk-live-123' WHERE id = 7",
    "blocked_by": None,
}


def test_parse_full_row_normalises_the_query() -> None:
    backend = parse_backend(FULL_ROW)
    assert backend == Backend(
        pid=4242,
        datname="app",
        usename="app_user",
        application_name="web:1234",
        client_addr="10.1.2.3",
        backend_type="client backend",
        state="idle in transaction",
        wait_event_type="Client",
        wait_event="ClientRead",
        backend_age_s=120.5,
        xact_age_s=31.25,
        query_age_s=30.0,
        state_age_s=29.5,
        query="UPDATE accounts SET api_key = $1 WHERE id = $2",
        query_hidden=False,
        blocked_by=(),
    )


def test_parse_row_of_a_background_worker_with_nulls() -> None:
    row = {
        "pid": 77,
        "datname": None,
        "usename": None,
        "application_name": "",
        "client_addr": None,
        "backend_type": "autovacuum launcher",
        "state": None,
        "wait_event_type": "Activity",
        "wait_event": "AutoVacuumMain",
        "backend_age_s": 3600.0,
        "xact_age_s": None,
        "query_age_s": None,
        "state_age_s": None,
        "query": "",
        "blocked_by": None,
    }
    backend = parse_backend(row)
    assert backend.client_addr is None
    assert backend.xact_age_s is None
    assert backend.query_age_s is None
    assert backend.state is None
    assert backend.query == ""
    assert backend.query_hidden is False


def test_parse_hidden_row_marks_it_and_shows_the_marker() -> None:
    row = dict.fromkeys(FULL_ROW) | {
        "pid": 9,
        "datname": "app",
        "usename": "someone_else",
        "query": "<insufficient privilege>",
    }
    backend = parse_backend(row)
    assert backend.query_hidden is True
    assert backend.query == HIDDEN_QUERY
    assert backend.state is None
    assert backend.backend_age_s is None


def test_parse_blocked_row_and_long_query() -> None:
    long_query = "SELECT " + ", ".join(f"column_{i}" for i in range(400)) + " FROM t"
    backend = parse_backend(FULL_ROW | {"blocked_by": [12, 13], "query": long_query})
    assert backend.blocked_by == (12, 13)
    assert len(backend.query) == QUERY_MAX_CHARS
    assert backend.query.endswith("…")


def test_parse_activity_summary() -> None:
    activity = parse_activity(
        {"database": "app", "total_client_sessions": 12}, [FULL_ROW, FULL_ROW | {"pid": 1}]
    )
    assert activity.database == "app"
    assert activity.total_client_sessions == 12
    assert [backend.pid for backend in activity.backends] == [4242, 1]


@contextlib.contextmanager
def outside_session(url: URL, application_name: str) -> Iterator[tuple[Connection, int]]:
    """A separate session (its own engine), yielding its connection and backend pid."""
    engine = create_engine(url, connect_args={"application_name": application_name})
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            conn.commit()
            yield conn, pid
    finally:
        engine.dispose()


def find(backends: tuple[Backend, ...], pid: int) -> Backend:
    matches = [backend for backend in backends if backend.pid == pid]
    assert len(matches) == 1, f"pid {pid} not in {[b.pid for b in backends]}"
    return matches[0]


def test_idle_in_transaction_session_is_seen_with_its_ages(
    database_url: URL, make_probe: ProbeFactory
) -> None:
    name = f"pm-idle-{uuid.uuid4().hex[:8]}"
    probe = make_probe(database_url)
    with outside_session(database_url, name) as (conn, pid):
        conn.execute(text("SELECT 1"))  # autobegin: BEGIN; SELECT 1; then nothing
        time.sleep(1.0)
        probe.run_once()
        conn.rollback()
    snapshot = probe.health.snapshot()
    assert snapshot.up is True, snapshot.last_error
    assert snapshot.last_sample is not None
    backend = find(snapshot.last_sample.backends, pid)
    assert backend.state == "idle in transaction"
    assert backend.application_name == name
    assert backend.backend_type == "client backend"
    assert backend.xact_age_s is not None and 0.9 <= backend.xact_age_s < 30
    assert backend.state_age_s is not None and 0.9 <= backend.state_age_s <= backend.xact_age_s
    assert backend.backend_age_s is not None and backend.backend_age_s >= backend.xact_age_s
    assert backend.query == "SELECT $1"
    assert backend.query_hidden is False
    assert backend.blocked_by == ()


def test_fetch_excludes_its_own_backend_and_counts_sessions(database_url: URL) -> None:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            own_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            activity = fetch_activity(conn)
            database = conn.execute(text("SELECT current_database()")).scalar_one()
    finally:
        engine.dispose()
    assert own_pid not in {backend.pid for backend in activity.backends}
    assert activity.database == database
    assert activity.total_client_sessions >= 1  # at least this session
    assert all(backend.datname == database for backend in activity.backends)


@pytest.fixture
def locked_table(schema_url: URL) -> Iterator[URL]:
    engine = create_engine(schema_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL)"))
        conn.execute(text("INSERT INTO counter VALUES (1, 0)"))
    engine.dispose()
    yield schema_url


def test_blocked_session_shows_its_blocker(
    locked_table: URL, database_url: URL, make_probe: ProbeFactory, admin_engine: Engine
) -> None:
    probe = make_probe(database_url)
    waiter_pid: list[int] = []
    waiter_error: list[BaseException] = []
    holder_engine = create_engine(locked_table)
    waiter_engine = create_engine(locked_table)

    def wait_for_lock() -> None:
        try:
            with waiter_engine.connect() as conn:
                waiter_pid.append(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
                conn.execute(text("SET lock_timeout = '10s'"))  # bounded even if cleanup fails
                conn.execute(text("UPDATE counter SET n = n + 1 WHERE id = 1"))
                conn.commit()
        except BaseException as exc:
            waiter_error.append(exc)

    waiter = threading.Thread(target=wait_for_lock, daemon=True)
    holder = holder_engine.connect()
    try:
        holder_pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
        holder.execute(text("UPDATE counter SET n = n + 1 WHERE id = 1"))  # row lock, kept open
        waiter.start()
        blocked: list[Backend] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not blocked:
            probe.run_once()
            sample = probe.health.snapshot().last_sample
            assert sample is not None
            # PostgreSQL takes `state` from a status snapshot made when the probe's statement
            # first reads it, and the wait event and blockers live: one sample can catch the
            # waiter between its UPDATE starting and waiting ("idle in transaction" + Lock).
            blocked = [
                b for b in blocked_sessions(sample) if b.pid in waiter_pid and b.state == "active"
            ]
            time.sleep(0.05)
        assert blocked, "the waiting session never showed up as blocked and active"
        assert blocked[0].blocked_by == (holder_pid,)
        assert blocked[0].wait_event_type == "Lock"
        assert blocked[0].query == "UPDATE counter SET n = n + $1 WHERE id = $2"
        sample = probe.health.snapshot().last_sample
        assert sample is not None
        assert find(sample.backends, holder_pid).state == "idle in transaction"
    finally:
        holder.rollback()
        holder.close()
        waiter.join(timeout=15)
        with admin_engine.connect() as conn:  # last resort if a session is still stuck
            for pid in waiter_pid:
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        holder_engine.dispose()
        waiter_engine.dispose()
    assert not waiter.is_alive()
    assert waiter_error == []


def test_rows_of_other_roles_are_hidden_from_an_unprivileged_probe(
    database_url: URL, admin_engine: Engine, make_probe: ProbeFactory
) -> None:
    role = f"pm_probe_{uuid.uuid4().hex[:8]}"
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
    try:
        probe = make_probe(database_url.set(username=role))
        with outside_session(database_url, "pm-hidden-target") as (conn, pid):
            conn.execute(text("SELECT 'visible only to its role'"))
            probe.run_once()
            conn.rollback()
        probe.close()
        snapshot = probe.health.snapshot()
        assert snapshot.up is True, snapshot.last_error
        assert snapshot.last_sample is not None
        backend = find(snapshot.last_sample.backends, pid)
        assert backend.query_hidden is True
        assert backend.query == HIDDEN_QUERY
        assert backend.state is None
        assert snapshot.hidden_queries >= 1
        # Hidden sessions still count against max_connections.
        assert snapshot.last_sample.total_client_sessions >= 2
    finally:
        with admin_engine.connect() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"),
                {"r": role},
            )
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
