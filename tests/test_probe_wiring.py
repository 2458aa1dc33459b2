"""The probe as wired by create_app: its own single backend, pg_up follows the server."""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text

from monitor.app import create_app
from monitor.embedded import EmbeddedPostgres
from monitor.settings import Settings
from tests.conftest import url_string
from tests.servers import wait_for


def test_probe_uses_one_backend_and_never_the_app_pool(embedded_pg: EmbeddedPostgres) -> None:
    # The embedded server of this test session: no other process's probe is counted.
    settings = Settings(database_url=url_string(embedded_pg.url()), probe_interval_s=0.2)
    with TestClient(create_app(settings)) as client:
        _assert_single_probe_backend(client, create_engine(embedded_pg.url()))


def _assert_single_probe_backend(client: TestClient, engine: Engine) -> None:
    monitor = client.app.state.pool_monitor  # type: ignore[attr-defined]
    checkouts_before = monitor.pool_snapshot().counters.checkouts  # schema creation at startup
    probes_before = monitor.server_health.snapshot().probes_total
    assert wait_for(lambda: monitor.server_health.snapshot().probes_total >= probes_before + 3, 10)
    assert monitor.pool_stats().checked_out == 0
    assert monitor.pool_snapshot().counters.checkouts == checkouts_before  # probing never used it
    with engine.connect() as conn:
        probes = conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pool-monitor-probe'"
            )
        )
    engine.dispose()
    assert probes == 1


def test_pg_up_drops_when_the_server_stops_and_recovers() -> None:
    server = EmbeddedPostgres(Path("/tmp") / f"pm-up-{uuid.uuid4().hex[:8]}")
    url = server.start()
    try:
        settings = Settings(database_url=url_string(url), probe_interval_s=0.3, probe_timeout_s=1.0)
        with TestClient(create_app(settings)) as client:
            health = client.app.state.pool_monitor.server_health  # type: ignore[attr-defined]
            assert wait_for(lambda: health.snapshot().up is True, 10)
            server.stop()
            assert wait_for(lambda: health.snapshot().up is False, 10), "pg_up never went to 0"
            assert client.get("/healthz").status_code == 200
            assert client.get("/monitor/api/snapshot").json()["server"]["up"] is False
            server.restart()
            assert wait_for(lambda: health.snapshot().up is True, 10), "no recovery after restart"
    finally:
        server.close()
