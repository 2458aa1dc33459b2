"""The probe behind a real PgBouncer: it leaves nothing on the server sessions it shares."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psycopg2
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from monitor import PoolMonitor
from monitor.probes.runner import probe_timeouts_sql
from tests.pgbouncer import PgBouncer
from tests.servers import wait_for

from .conftest import ProbeFactory

SLOW_REQUESTS = 12


def session_timeouts(url: str) -> tuple[str, str]:
    """statement_timeout and lock_timeout as a plain new client sees them."""
    connection = psycopg2.connect(url, connect_timeout=5)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW statement_timeout")
            statement_timeout = cursor.fetchone()[0]  # type: ignore[index]
            cursor.execute("SHOW lock_timeout")
            lock_timeout = cursor.fetchone()[0]  # type: ignore[index]
        connection.rollback()
        return str(statement_timeout), str(lock_timeout)
    finally:
        connection.close()


def libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def test_probe_timeouts_hold_inside_its_transaction_only(
    database_url: URL, make_probe: ProbeFactory
) -> None:
    probe = make_probe(database_url, timeout_s=2.0)
    with probe.engine.connect() as conn:
        default = conn.execute(text("SHOW statement_timeout")).scalar_one()
        conn.exec_driver_sql(probe_timeouts_sql(probe.statement_timeout_ms, probe.lock_timeout_ms))
        inside = (
            conn.execute(text("SHOW statement_timeout")).scalar_one(),
            conn.execute(text("SHOW lock_timeout")).scalar_one(),
        )
        conn.rollback()
        after = conn.execute(text("SHOW statement_timeout")).scalar_one()
    assert inside == ("500ms", "200ms")
    assert after == default != "500ms"


def test_a_client_sharing_the_probes_server_session_sees_no_probe_setting(
    database_url: URL, pgbouncer_transaction: PgBouncer, make_probe: ProbeFactory
) -> None:
    # One server connection in the pool: the plain client below gets the probe's session.
    bouncer = pgbouncer_transaction
    direct = session_timeouts(libpq(database_url))
    probe = make_probe(bouncer.url(), timeout_s=2.0)
    for _ in range(3):
        probe.run_once()
    snapshot = probe.health.snapshot()
    assert snapshot.up is True, snapshot.last_error
    assert session_timeouts(libpq(bouncer.url())) == direct
    assert "500ms" not in direct


def test_slow_app_requests_through_transaction_pooling_all_succeed_with_the_probe_on(
    pgbouncer_transaction: PgBouncer,
) -> None:
    engine = create_engine(pgbouncer_transaction.url(), pool_size=3, max_overflow=0)
    app = FastAPI()

    @app.get("/slow")
    def slow() -> dict[str, str]:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_sleep(0.8)"))
        return {"status": "ok"}

    monitor = PoolMonitor(engine, probe_interval_s=0.1, probe_timeout_s=2.0)
    monitor.install(app)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            assert wait_for(lambda: monitor.server_health.snapshot().probes_total >= 1, 10)
            with ThreadPoolExecutor(max_workers=3) as workers:
                statuses = list(
                    workers.map(lambda _: client.get("/slow").status_code, range(SLOW_REQUESTS))
                )
            probes = monitor.server_health.snapshot().probes_total
    finally:
        monitor.detach()
        engine.dispose()
    assert statuses == [200] * SLOW_REQUESTS
    assert probes >= 2  # the probe really ran between the requests


def test_through_session_pooling_the_probe_keeps_no_client_between_probes(
    pgbouncer_session: PgBouncer, make_probe: ProbeFactory
) -> None:
    probe = make_probe(pgbouncer_session.url(), timeout_s=2.0)
    for _ in range(3):
        probe.run_once()
    snapshot = probe.health.snapshot()
    assert snapshot.up is True, snapshot.last_error
    assert snapshot.last_sample is not None and snapshot.last_sample.via_pooler is True
    clients = pgbouncer_session.admin("SHOW CLIENTS")
    assert probe.application_name not in {row["application_name"] for row in clients}
    assert probe.engine.pool.checkedin() == 0  # type: ignore[attr-defined]
