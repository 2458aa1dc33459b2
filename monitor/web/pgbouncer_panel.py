"""The PgBouncer panel: is a pooler in the app's path, in which mode, can held connections be
joined to server sessions, and its pools from the admin console. Pure: a view in, rows out."""

from __future__ import annotations

from dataclasses import dataclass

from monitor.state.pooler import JOIN_DIRECT, JOIN_PGBOUNCER
from monitor.state.view import MonitorView
from monitor.web.formatting import NOTHING, Fact, ago, duration
from monitor.web.render_context import RenderContext

# A client waiting this long for a server is a saturated pool, not a blip.
MAX_WAIT_FAIL_S = 5.0


@dataclass(frozen=True, slots=True)
class PoolRow:
    database: str
    user: str
    pool_mode: str
    clients_active: int
    clients_waiting: int
    servers_active: int
    servers_idle: int
    servers_used: int
    max_wait: str
    status: str


@dataclass(frozen=True, slots=True)
class PgBouncerPanel:
    status: str
    status_label: str
    facts: tuple[Fact, ...]
    note: str | None  # why held connections show no server state
    pools: tuple[PoolRow, ...]
    last_error: str | None


def build_pgbouncer(view: MonitorView, ctx: RenderContext) -> PgBouncerPanel:
    pooler, console = view.pooler, view.pgbouncer
    now = view.pool.taken_at
    if pooler is None or not pooler.detected:
        how = pooler.how if pooler is not None else "no probe sample yet"
        return PgBouncerPanel(
            "ok", "Direct", (Fact("path", f"app to PostgreSQL directly ({how})"),), None, (), None
        )
    join = {
        JOIN_DIRECT: "by pid",
        JOIN_PGBOUNCER: "through PgBouncer (client socket → server → pid)",
    }.get(pooler.join, "not possible")
    facts = [
        Fact("detected", pooler.how),
        Fact("pool mode", pooler.pool_mode or "unknown (no admin console)"),
        Fact("held connections joined to the server", join),
        Fact("admin console", pooler.console),
    ]
    rows: tuple[PoolRow, ...] = ()
    last_error = None
    if console is not None:
        facts.append(Fact("last read", ago(console.last_success_at, now)))
        if console.last_error is not None and not console.up:
            last_error = console.last_error
        sample = console.last_sample if console.up else None
        if sample is not None:
            if sample.max_client_conn is not None:
                facts.append(Fact("max_client_conn", str(sample.max_client_conn)))
            rows = tuple(
                PoolRow(
                    database=pool.database,
                    user=pool.user,
                    pool_mode=pool.pool_mode or sample.pool_mode or NOTHING,
                    clients_active=pool.clients_active,
                    clients_waiting=pool.clients_waiting,
                    servers_active=pool.servers_active,
                    servers_idle=pool.servers_idle,
                    servers_used=pool.servers_used,
                    max_wait=duration(pool.max_wait_s) if pool.clients_waiting else NOTHING,
                    status=_pool_status(pool.clients_waiting, pool.max_wait_s),
                )
                for pool in sample.app_pools()
            )
    statuses = [row.status for row in rows]
    if last_error is not None or "fail" in statuses:
        status = "fail"
    elif "warn" in statuses or pooler.pool_mode is None:
        status = "warn"
    else:
        status = "ok"
    mode = f", {pooler.pool_mode} mode" if pooler.pool_mode else ""
    return PgBouncerPanel(
        status, f"PgBouncer{mode}", tuple(facts), pooler.why_no_join, rows, last_error
    )


def _pool_status(waiting: int, max_wait_s: float) -> str:
    if waiting and max_wait_s >= MAX_WAIT_FAIL_S:
        return "fail"
    return "warn" if waiting else "ok"
