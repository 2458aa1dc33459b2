"""Literal monitor snapshots for the view-model tests: a view built from records, no database."""

from __future__ import annotations

import math

from monitor.state.histogram import HistogramSnapshot
from monitor.state.holders import Holder
from monitor.state.records import (
    ConnectionView,
    PoolCounters,
    PoolSnapshot,
    PoolStats,
)
from monitor.state.server import Backend, ServerHealthSnapshot, ServerSample, ServerSettings
from monitor.state.sites import Frame
from monitor.state.view import AppInfo, MonitorView, build_view
from monitor.web.render_context import RenderContext

NOW = 2_000_000_000.0  # wall clock of every literal snapshot
BOUNDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, math.inf)
SITE = (
    Frame("/srv/app/routes.py", 42, "read_items", "with engine.connect() as conn:"),
    Frame("/srv/app/main.py", 7, "handler", "return read_items()"),
)
HOLDER = Holder("request", "GET /items/{item_id}", "req-1")


def histogram(cumulative: tuple[int, ...] = (0,) * 10, total: float = 0.0) -> HistogramSnapshot:
    return HistogramSnapshot(BOUNDS, cumulative, total, cumulative[-1])


def counters(**overrides: object) -> PoolCounters:
    values: dict[str, object] = {
        "checkouts": 0, "connects": 0, "invalidations_hard": 0, "invalidations_soft": 0,
        "closes": 0, "detaches": 0, "gc_reclaimed": 0, "timeouts": 0, "slow_queries": 0,
        "statement_errors": 0, "multi_connection_requests": 0, "leaks_by_class": {},
        "listener_errors": 0,
    }  # fmt: skip
    values.update(overrides)
    return PoolCounters(**values)  # type: ignore[arg-type]


def connection(slot: int = 1, pid: int | None = 101, held_s: float | None = 5.0) -> ConnectionView:
    return ConnectionView(
        slot_id=slot, pid=pid, connected_at=NOW - 60, checked_out=held_s is not None,
        checked_out_at=None if held_s is None else NOW - held_s, held_for_s=held_s,
        holder=HOLDER if held_s is not None else None, site=SITE if held_s is not None else (),
        checkouts=3, leak_class=None, history=(),
    )  # fmt: skip


def pool(**overrides: object) -> PoolSnapshot:
    values: dict[str, object] = {
        "pool_name": "default", "taken_at": NOW, "leak_threshold_s": 10.0, "slow_query_s": 0.5,
        "connections": (), "checked_out": 0, "pending_requests": 0, "counters": counters(),
        "wait_time": histogram(), "use_time": histogram(), "create_time": histogram(),
        "leaks": (), "resolved_leaks": (), "gc_reclaims": (), "timeouts": (), "slow_queries": (),
        "multi_connection_requests": (), "events": (),
    }  # fmt: skip
    values.update(overrides)
    return PoolSnapshot(**values)  # type: ignore[arg-type]


def stats(checked_out: int = 0, overflow: int = 0) -> PoolStats:
    return PoolStats(
        pool_class="QueuePool", size=5, max_overflow=5, max_connections=10,
        checked_out=checked_out, checked_in=2, overflow=overflow, timeout_s=10.0,
        recycle_s=1800.0, pre_ping=True, echo=False,
    )  # fmt: skip


def backend(pid: int, state: str, *, app: str = "app", query: str = "SELECT $1") -> Backend:
    return Backend(
        pid=pid, datname="db", usename="u", application_name=app, client_addr="127.0.0.1",
        backend_type="client backend", state=state, wait_event_type="Client",
        wait_event="ClientRead", backend_age_s=60.0,
        xact_age_s=5.0 if "transaction" in state else None, query_age_s=5.0, state_age_s=5.0,
        query=query, query_hidden=False,
    )  # fmt: skip


SETTINGS = ServerSettings(
    server_version="15.20", server_version_num=150020, max_connections=100,
    superuser_reserved_connections=3, reserved_connections=0,
    idle_in_transaction_session_timeout_s=60.0, statement_timeout_s=None,
    idle_session_timeout_s=None, transaction_timeout_s=None,
)  # fmt: skip


def server(
    backends: tuple[Backend, ...] = (), *, up: bool | None = True, sample: bool = True
) -> ServerHealthSnapshot:
    last = ServerSample(
        taken_at=NOW - 1, duration_s=0.004, database="db", backends=backends,
        total_client_sessions=len(backends) + 1, settings=SETTINGS,
    )  # fmt: skip
    failed = up is False
    return ServerHealthSnapshot(
        up=up, last_sample=last if sample else None, errors_total=3 if failed else 0,
        last_error="connection refused" if failed else None,
        last_error_at=NOW - 2 if failed else None,
        last_success_at=NOW - 1 if sample else None, probe_durations_s=(0.004, 0.006),
        probes_total=5, skipped_total=0, hidden_queries=0,
    )  # fmt: skip


APP = AppInfo("postgresql://u:***@localhost/db", "DATABASE_URL", True, None, 1)


def make_view(
    snapshot: PoolSnapshot | None = None,
    health: ServerHealthSnapshot | None = None,
    pool_stats: PoolStats | None = None,
) -> MonitorView:
    return build_view(snapshot or pool(), pool_stats or stats(), health or server(), APP)


CTX = RenderContext(cwd="/srv")
