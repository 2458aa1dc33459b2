"""Session lists are capped: the most telling sessions listed, the rest counted by state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from monitor.state.server import Backend
from monitor.state.session_cap import cap_sessions
from monitor.urls import app_url
from tests.servers import wait_for

EXTRA_SESSIONS = 60  # CI's server allows 100 connections: stay well inside it


def backend(pid: int, state: str, age: float, blocked_by: tuple[int, ...] = ()) -> Backend:
    return Backend(
        pid=pid, datname="d", usename="u", application_name="a", client_addr=None,
        backend_type="client backend", state=state, wait_event_type=None, wait_event=None,
        backend_age_s=age, xact_age_s=age if "transaction" in state else None,
        query_age_s=age, state_age_s=age, query="SELECT $1", query_hidden=False,
        blocked_by=blocked_by,
    )  # fmt: skip


def test_short_lists_are_kept_whole() -> None:
    backends = [backend(pid, "idle", 1.0) for pid in range(10)]
    capped = cap_sessions(backends, cap=10)
    assert capped.shown == tuple(backends) and capped.omitted == 0


def test_the_most_telling_sessions_are_listed_the_rest_counted() -> None:
    idle = [backend(pid, "idle", float(pid)) for pid in range(100, 400)]
    telling = [
        backend(1, "active", 2.0, blocked_by=(2,)),
        backend(2, "idle in transaction", 30.0),
        backend(3, "active", 5.0),
    ]
    capped = cap_sessions([*idle, *telling], cap=5)
    assert [b.pid for b in capped.shown] == [1, 2, 3, 398, 399]  # then the oldest idle ones
    assert capped.total == 303 and capped.omitted == 298
    assert dict(capped.omitted_by_state) == {"idle": 298}


@pytest.fixture
def extra_sessions(client: TestClient) -> Iterator[list[Connection]]:
    """Sessions with the app's application_name that its pool does not know (orphans)."""
    app: Any = client.app
    engine = create_engine(
        app_url(app.state.settings.database_url),
        poolclass=NullPool,
        connect_args={"application_name": app.state.settings.application_name},
    )
    connections = [engine.connect() for _ in range(EXTRA_SESSIONS)]
    try:
        for conn in connections[:5]:
            conn.exec_driver_sql("SELECT 1")  # now idle in transaction
        yield connections
    finally:
        for conn in connections:
            conn.close()
        engine.dispose()


def test_snapshots_and_polls_list_at_most_the_cap(
    client: TestClient, extra_sessions: list[Connection]
) -> None:
    def seen() -> dict[str, Any] | None:
        data: dict[str, Any] = client.get("/monitor/api/snapshot").json()
        lists = data.get("session_lists", {})
        total = lists.get("server_sessions", {}).get("total", 0)
        return data if total >= EXTRA_SESSIONS and lists["orphans"]["total"] >= 60 else None

    assert wait_for(lambda: seen() is not None, 30), "the probe never saw the extra sessions"
    data = seen()
    assert data is not None
    sessions, orphans = data["session_lists"]["server_sessions"], data["session_lists"]["orphans"]
    backends = data["server"]["last_sample"]["backends"]
    assert sessions["cap"] == 50 and len(backends) == sessions["shown"] == 50
    assert sum(sessions["omitted_by_state"].values()) == sessions["total"] - 50
    assert len(data["orphans"]) == orphans["shown"] == 50
    # The five idle-in-transaction sessions are among those listed: the most telling first.
    assert sum(1 for b in backends if b["state"] == "idle in transaction") >= 5
    poll = client.get("/monitor/partials").text
    assert "more (the oldest are listed)" in poll  # the dashboard lists a few, counts the rest
    assert poll.count("<tr>") < 200  # rows of the orphans table are bounded too
