"""pg_stat_activity: every backend of the current database, ages computed by the server."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from monitor import sqltext
from monitor.state.server import HIDDEN_QUERY, Backend

QUERY_MAX_CHARS = 1024

# One instant for every row, so ages of different backends compare exactly.
# pg_blocking_pids takes lock-manager locks: only ask for backends waiting on a heavyweight lock.
ACTIVITY_SQL = """
WITH probe AS (SELECT clock_timestamp() AS now)
SELECT
    a.pid,
    a.datname,
    a.usename,
    a.application_name,
    host(a.client_addr) AS client_addr,
    a.backend_type,
    a.state,
    a.wait_event_type,
    a.wait_event,
    EXTRACT(EPOCH FROM probe.now - a.backend_start)::float8 AS backend_age_s,
    EXTRACT(EPOCH FROM probe.now - a.xact_start)::float8 AS xact_age_s,
    EXTRACT(EPOCH FROM probe.now - a.query_start)::float8 AS query_age_s,
    EXTRACT(EPOCH FROM probe.now - a.state_change)::float8 AS state_age_s,
    left(a.query, 1024) AS query,
    CASE WHEN a.wait_event_type = 'Lock' THEN pg_blocking_pids(a.pid) END AS blocked_by
FROM pg_stat_activity AS a CROSS JOIN probe
WHERE a.datname = current_database()
  AND a.pid <> pg_backend_pid()
ORDER BY a.pid
"""

# Rows hidden from this role have a NULL backend_type; those with a database are sessions.
SERVER_SESSIONS_SQL = """
SELECT
    current_database() AS database,
    pg_backend_pid() AS probe_pid,
    count(*) FILTER (
        WHERE backend_type = 'client backend' OR (backend_type IS NULL AND datname IS NOT NULL)
    ) AS total_client_sessions
FROM pg_stat_activity
"""


@dataclass(frozen=True, slots=True)
class Activity:
    """What one read of pg_stat_activity found."""

    database: str
    total_client_sessions: int  # whole server, the probe included
    backends: tuple[Backend, ...]  # current database, the probe excluded
    probe_pid: int | None = None  # the server's pid of the probe's session


def parse_backend(row: Mapping[Any, Any]) -> Backend:
    """One pg_stat_activity row to a Backend: NULLs kept as None, query text normalised."""
    raw_query = row.get("query")
    hidden = raw_query == HIDDEN_QUERY
    query = HIDDEN_QUERY if hidden else _truncate(sqltext.normalize(raw_query or ""))
    return Backend(
        pid=int(row["pid"]),
        datname=row.get("datname"),
        usename=row.get("usename"),
        application_name=row.get("application_name"),
        client_addr=_optional_str(row.get("client_addr")),
        backend_type=row.get("backend_type"),
        state=row.get("state"),
        wait_event_type=row.get("wait_event_type"),
        wait_event=row.get("wait_event"),
        backend_age_s=_optional_float(row.get("backend_age_s")),
        xact_age_s=_optional_float(row.get("xact_age_s")),
        query_age_s=_optional_float(row.get("query_age_s")),
        state_age_s=_optional_float(row.get("state_age_s")),
        query=query,
        query_hidden=hidden,
        blocked_by=tuple(int(pid) for pid in row.get("blocked_by") or ()),
    )


def parse_activity(summary: Mapping[Any, Any], rows: Iterable[Mapping[Any, Any]]) -> Activity:
    """The summary row of SERVER_SESSIONS_SQL plus the rows of ACTIVITY_SQL."""
    return Activity(
        database=str(summary["database"]),
        total_client_sessions=int(summary["total_client_sessions"]),
        backends=tuple(parse_backend(row) for row in rows),
        probe_pid=_optional_int(summary.get("probe_pid")),
    )


def fetch_activity(conn: Connection) -> Activity:
    """Run both queries on `conn`; inside one transaction they read the same statistics snapshot."""
    summary = conn.execute(text(SERVER_SESSIONS_SQL)).mappings().one()
    rows = conn.execute(text(ACTIVITY_SQL)).mappings().all()
    return parse_activity(summary, rows)


def _truncate(query: str) -> str:
    if len(query) <= QUERY_MAX_CHARS:
        return query
    return query[: QUERY_MAX_CHARS - 1] + sqltext.ELLIPSIS


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)
