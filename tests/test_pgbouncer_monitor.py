"""The monitor on an app behind a real PgBouncer: detection, the session-mode join, no invented
server facts in transaction mode, and PgBouncer's pools as Prometheus series."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from monitor import PoolMonitor
from monitor.app import create_app
from monitor.metrics import names
from monitor.metrics.collector import MonitorCollector
from monitor.settings import Settings
from monitor.state.pooler import JOIN_NONE, JOIN_PGBOUNCER
from monitor.state.records import LeakClass
from monitor.state.verdicts import RuleVerdict
from monitor.state.view import MonitorView
from tests.pgbouncer import PgBouncer
from tests.servers import wait_for


@contextmanager
def watched(bouncer: PgBouncer, *, console: bool = True) -> Iterator[tuple[Engine, PoolMonitor]]:
    engine = create_engine(bouncer.url(), pool_size=4, max_overflow=0, pool_timeout=5)
    monitor = PoolMonitor(
        engine,
        leak_threshold_s=0.5,
        probe_interval_s=0.2,
        probe_timeout_s=2.0,
        pgbouncer_url=bouncer.admin_url if console else None,
    )
    monitor.start()
    try:
        yield engine, monitor
    finally:
        monitor.detach()
        engine.dispose()


def fresh_view(monitor: PoolMonitor, predicate: Any) -> Any:
    """The first view (after a new probe) that satisfies `predicate`."""
    found: list[Any] = []

    def check() -> bool:
        view = monitor.view()
        if predicate(view):
            found.append(view)
            return True
        return False

    assert wait_for(check, 15), f"no view matched; last: {monitor.view().pooler}"
    return found[0]


def held(engine: Engine, count: int, *, in_transaction: bool) -> tuple[ExitStack, list[Connection]]:
    stack = ExitStack()
    connections = []
    for _ in range(count):
        conn = stack.enter_context(engine.connect())
        conn.execute(text("SELECT 1"))
        if not in_transaction:
            conn.commit()  # checked out, no transaction open
        connections.append(conn)
    return stack, connections


def test_transaction_mode_says_no_join_and_invents_no_server_fact(
    pgbouncer_transaction: PgBouncer,
) -> None:
    with watched(pgbouncer_transaction) as (engine, monitor):
        stack, _ = held(engine, 2, in_transaction=False)
        with stack:
            view = fresh_view(
                monitor,
                lambda v: (
                    v.pooler.pool_mode is not None
                    and len(v.held) == 2
                    and all(h.connection.leak_class for h in v.held)
                ),
            )
            snapshot = monitor.snapshot()
    assert view.pooler.detected and view.pooler.pool_mode == "transaction"
    assert view.pooler.join == JOIN_NONE
    assert view.phantoms == () and view.orphans == ()
    for connection in view.held:
        assert connection.server is None and connection.server_pid is None
        assert "transaction mode" in (connection.no_server_view or "")
        assert connection.connection.holder is not None  # pool-side facts kept
        assert connection.connection.leak_class is LeakClass.NO_SERVER_VIEW
    assert {leak.leak_class for leak in view.pool.leaks} == {LeakClass.NO_SERVER_VIEW}
    assert snapshot["pooler"]["pool_mode"] == "transaction"
    assert snapshot["pgbouncer"]["up"] is True


def test_a_pooler_of_unknown_mode_is_detected_without_its_console(
    pgbouncer_session: PgBouncer,
) -> None:
    with watched(pgbouncer_session, console=False) as (engine, monitor):
        stack, _ = held(engine, 1, in_transaction=True)
        with stack:
            # The commit rule counts transactions idle for its minimum age (1 s) or longer.
            view = fresh_view(
                monitor,
                lambda v: (
                    v.pooler.detected and len(v.held) == 1 and commit_rule(v).status == "warn"
                ),
            )
    assert view.pooler.pool_mode is None and view.pooler.join == JOIN_NONE
    assert "pgbouncer_url" in (view.held[0].no_server_view or "")
    assert view.phantoms == ()
    assert view.held[0].server is None
    assert "idle in transaction" in commit_rule(view).why  # the server's count


def commit_rule(view: MonitorView) -> RuleVerdict:
    return next(r for r in view.rules if r.rule.startswith("Commit explicitly"))


def test_session_mode_joins_held_connections_to_their_server_session(
    pgbouncer_session: PgBouncer,
) -> None:
    with watched(pgbouncer_session) as (engine, monitor):
        stack, connections = held(engine, 2, in_transaction=True)
        with stack:
            real_pids = {
                c.execute(text("SELECT pg_backend_pid()")).scalar_one() for c in connections
            }
            view = fresh_view(
                monitor,
                lambda v: (
                    v.pooler.join == JOIN_PGBOUNCER
                    and len(v.held) == 2
                    and all(h.server is not None for h in v.held)
                    and all(h.connection.leak_class for h in v.held)
                ),
            )
    assert {h.server_pid for h in view.held} == real_pids
    assert {h.connection.pid for h in view.held}.isdisjoint(real_pids)  # PgBouncer's keys
    assert all(h.server.state == "idle in transaction" for h in view.held)
    assert all(h.no_server_view is None for h in view.held)
    assert {h.connection.leak_class for h in view.held} == {LeakClass.IDLE_IN_TRANSACTION}
    assert view.phantoms == ()


def test_waiting_clients_and_max_wait_are_exported(pgbouncer_transaction: PgBouncer) -> None:
    # One server connection: a second client's query waits while the first holds a transaction.
    with watched(pgbouncer_transaction) as (engine, monitor):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(MonitorCollector(lambda: monitor))
        labels = {"database": pgbouncer_transaction.database, "user": pgbouncer_transaction.user}

        def waiting() -> float:
            value = registry.get_sample_value(
                names.PGBOUNCER_CLIENTS, {**labels, "state": "waiting"}
            )
            return value or 0.0

        other = create_engine(pgbouncer_transaction.url())
        done = threading.Event()
        with engine.connect() as holder:
            holder.execute(text("SELECT 1"))  # the transaction takes the only server

            def blocked_query() -> None:
                with other.connect() as conn:
                    conn.execute(text("SELECT 1"))
                done.set()

            thread = threading.Thread(target=blocked_query, daemon=True)
            thread.start()
            assert wait_for(lambda: waiting() >= 1, 15)
            assert wait_for(
                lambda: (
                    (registry.get_sample_value(names.PGBOUNCER_MAX_WAIT_SECONDS, labels) or 0) > 0
                ),
                15,
            )
            assert registry.get_sample_value(names.PGBOUNCER_UP) == 1
            assert (
                registry.get_sample_value(
                    names.PGBOUNCER_POOL_INFO, {**labels, "pool_mode": "transaction"}
                )
                == 1
            )
            holder.rollback()
        assert done.wait(15)
        thread.join(5)
        other.dispose()
        assert wait_for(lambda: waiting() == 0, 15)
        servers = registry.get_sample_value(names.PGBOUNCER_SERVERS, {**labels, "state": "idle"})
        assert servers is not None
        assert (
            registry.get_sample_value(
                names.PGBOUNCER_TRANSACTIONS_TOTAL, {"database": labels["database"]}
            )
            or 0
        ) > 0


def test_dashboard_panel_shows_the_pooler_its_pools_and_the_joined_pids(
    pgbouncer_session: PgBouncer,
) -> None:
    engine = create_engine(pgbouncer_session.url(), pool_size=2, max_overflow=0)
    monitor = PoolMonitor(engine, probe_interval_s=0.2, pgbouncer_url=pgbouncer_session.admin_url)
    app = FastAPI()
    monitor.install(app)
    try:
        with TestClient(app) as client, engine.connect() as conn:
            conn.execute(text("SELECT 1"))  # held, in a transaction, linked to a server
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            assert wait_for(lambda: monitor.view().held and monitor.view().held[0].server, 15)
            panel = client.get("/monitor/partials/pgbouncer")
            held_panel = client.get("/monitor/partials/held")
            page = client.get("/monitor/")
    finally:
        monitor.detach()
        engine.dispose()
    assert panel.status_code == 200
    assert "PgBouncer, session mode" in panel.text
    assert 'id="pgbouncer-pools"' in panel.text and pgbouncer_session.database in panel.text
    assert f">{pid}<" in held_panel.text  # the server's pid, not PgBouncer's key
    assert "idle in transaction" in held_panel.text
    assert 'id="panel-pgbouncer"' in page.text


def test_dashboard_panel_says_direct_without_a_pooler(database_url: URL) -> None:
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    monitor = PoolMonitor(engine, probe_interval_s=0.2)
    app = FastAPI()
    monitor.install(app)
    try:
        with TestClient(app) as client:
            assert wait_for(lambda: monitor.server_health.snapshot().up is True, 15)
            panel = client.get("/monitor/partials/pgbouncer")
            snapshot = client.get("/monitor/api/snapshot").json()
    finally:
        monitor.detach()
        engine.dispose()
    assert "Direct" in panel.text and "PgBouncer" not in panel.text.split("</span>", 1)[0]
    assert snapshot["pooler"]["detected"] is False
    assert snapshot["pgbouncer"] is None


def test_create_app_reads_the_console_from_settings(
    app_settings: Settings, pgbouncer_session: PgBouncer
) -> None:
    settings = app_settings.model_copy(update={"pgbouncer_url": pgbouncer_session.admin_url})
    with TestClient(create_app(settings)) as client:
        monitor = client.app.state.pool_monitor  # type: ignore[attr-defined]
        assert wait_for(lambda: monitor.pgbouncer_health.snapshot().up is True, 15)
        metrics = client.get("/metrics").text
    assert "pool_monitor_pgbouncer_up 1.0" in metrics
    assert pgbouncer_session.admin_url not in metrics


def test_an_asyncpg_engine_is_joined_through_pgbouncer_too(pgbouncer_session: PgBouncer) -> None:
    engine = create_async_engine(pgbouncer_session.url("postgresql+asyncpg"), pool_size=2)
    monitor = PoolMonitor(engine, probe_interval_s=0.2, pgbouncer_url=pgbouncer_session.admin_url)

    async def hold_and_look() -> tuple[int, Any]:
        async with engine.connect() as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            for _ in range(300):  # bounded: 15 s
                view = monitor.view()
                if view.held and view.held[0].server is not None:
                    return int(pid), view
                await asyncio.sleep(0.05)
            return int(pid), monitor.view()

    monitor.start()
    try:
        pid, view = asyncio.run(hold_and_look())
    finally:
        monitor.detach()
        asyncio.run(engine.dispose())
    assert view.pooler.join == JOIN_PGBOUNCER
    (connection,) = view.held
    assert connection.server_pid == pid and connection.server.state == "idle in transaction"
    assert connection.connection.client_port is not None
