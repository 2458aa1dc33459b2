"""ServerProbe: one backend, bounded time, failures recorded and recovered from."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from monitor.embedded import EmbeddedPostgres
from monitor.probes.runner import ServerProbe
from monitor.probes.scheduler import start_scheduler, stop_scheduler
from monitor.state.server import ServerHealth

from .conftest import BlackholeListener, FaultProxy, ProbeFactory

# A deadline test proves "returns, does not hang": a busy machine may add seconds to it.
SLACK_S = 15.0


def probe_backends(admin_engine: Engine, application_name: str) -> int:
    with admin_engine.connect() as conn:
        count: int = conn.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
            {"name": application_name},
        ).scalar_one()
    return count


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_probe_samples_the_server(database_url: URL, make_probe: ProbeFactory) -> None:
    probe = make_probe(database_url)
    before = time.time()
    probe.run_once()
    snapshot = probe.health.snapshot()
    assert snapshot.up is True, snapshot.last_error
    assert snapshot.errors_total == 0
    assert snapshot.probes_total == 1
    assert snapshot.last_success_at is not None and snapshot.last_success_at >= before
    sample = snapshot.last_sample
    assert sample is not None
    assert before <= sample.taken_at <= time.time()
    assert 0 < sample.duration_s < probe.timeout_s
    assert sample.settings.max_connections > 0
    assert sample.total_client_sessions >= 1
    assert all(b.application_name != probe.application_name for b in sample.backends)


def test_probe_holds_one_backend_and_excludes_itself(
    database_url: URL, make_probe: ProbeFactory, admin_engine: Engine
) -> None:
    probe = make_probe(database_url)
    for _ in range(5):
        probe.run_once()
    snapshot = probe.health.snapshot()
    assert snapshot.up is True, snapshot.last_error
    assert snapshot.probes_total == 5
    assert probe_backends(admin_engine, probe.application_name) == 1
    assert snapshot.last_sample is not None
    assert probe.application_name not in {b.application_name for b in snapshot.last_sample.backends}
    probe.close()
    assert wait_until(lambda: probe_backends(admin_engine, probe.application_name) == 0, 30)


def test_probe_session_keeps_the_server_defaults_between_probes(
    database_url: URL, make_probe: ProbeFactory
) -> None:
    # Its timeouts are SET LOCAL (tests/probes/test_pgbouncer.py): the session keeps none.
    probe = make_probe(database_url, timeout_s=2.0)
    probe.run_once()
    assert probe.health.snapshot().last_sample is not None
    assert probe.health.snapshot().last_sample.via_pooler is False  # type: ignore[union-attr]
    with probe.engine.connect() as conn:
        statement_timeout = conn.execute(text("SHOW statement_timeout")).scalar_one()
        application_name = conn.execute(text("SHOW application_name")).scalar_one()
    assert statement_timeout != "500ms"
    assert application_name == probe.application_name
    assert probe.engine.pool.size() == 1  # type: ignore[attr-defined]


def test_probe_survives_its_backend_being_terminated(
    database_url: URL, make_probe: ProbeFactory, admin_engine: Engine
) -> None:
    probe = make_probe(database_url)
    probe.run_once()
    with admin_engine.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = :name"
            ),
            {"name": probe.application_name},
        ).scalar_one()
    assert killed == 1
    assert wait_until(lambda: probe_backends(admin_engine, probe.application_name) == 0, 30)
    probe.run_once()  # the pooled connection is dead: one fresh retry, not a false "down"
    snapshot = probe.health.snapshot()
    assert snapshot.up is True, snapshot.last_error
    assert snapshot.errors_total == 0
    assert probe_backends(admin_engine, probe.application_name) == 1


def test_probe_of_a_stopped_server_fails_fast_then_recovers(
    embedded_pg: EmbeddedPostgres, make_probe: ProbeFactory
) -> None:
    probe = make_probe(embedded_pg.url(), timeout_s=2.0)
    probe.run_once()
    assert probe.health.snapshot().up is True
    embedded_pg.stop()
    try:
        started = time.monotonic()
        probe.run_once()
        elapsed_s = time.monotonic() - started
        down = probe.health.snapshot()
        assert down.up is False
        assert elapsed_s < probe.timeout_s + SLACK_S  # bounded, not a hang
        assert down.errors_total == 1
        assert down.last_error is not None and "Error" in down.last_error
        assert down.last_sample is not None  # the last good sample stays, marked stale
        probe.run_once()  # still down: fails again, still fast
        assert probe.health.snapshot().errors_total == 2
    finally:
        embedded_pg.restart()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        probe.run_once()
        if probe.health.snapshot().up:
            break
        time.sleep(0.2)
    assert probe.health.snapshot().up is True, probe.health.snapshot().last_error


def test_probe_of_a_blackholed_address_returns_within_its_timeout(
    blackhole: BlackholeListener, make_probe: ProbeFactory
) -> None:
    probe = make_probe(f"postgresql://postgres@127.0.0.1:{blackhole.port}/test", timeout_s=2.0)
    for attempt in range(2):
        started = time.monotonic()
        probe.run_once()
        elapsed_s = time.monotonic() - started
        assert elapsed_s < probe.timeout_s + SLACK_S, (attempt, elapsed_s)
    snapshot = probe.health.snapshot()
    assert snapshot.up is False
    assert snapshot.errors_total == 2
    assert snapshot.last_error is not None and "timeout" in snapshot.last_error.lower()


def test_half_open_connection_is_cut_by_the_client_deadline(
    fault_proxy: tuple[FaultProxy, URL], make_probe: ProbeFactory, admin_engine: Engine
) -> None:
    proxy, url = fault_proxy
    probe = make_probe(url, timeout_s=1.0)
    probe.run_once()
    assert probe.health.snapshot().up is True, probe.health.snapshot().last_error

    proxy.dropping.set()  # established connection, every byte now vanishes
    started = time.monotonic()
    probe.run_once()
    elapsed_s = time.monotonic() - started
    snapshot = probe.health.snapshot()
    assert snapshot.up is False
    assert elapsed_s < probe.timeout_s + SLACK_S  # bounded, not a hang

    proxy.dropping.clear()
    probe.run_once()
    assert probe.health.snapshot().up is True, probe.health.snapshot().last_error
    assert wait_until(lambda: probe_backends(admin_engine, probe.application_name) == 1, 30)


def test_a_tick_during_a_running_probe_is_skipped(
    fault_proxy: tuple[FaultProxy, URL], make_probe: ProbeFactory
) -> None:
    proxy, url = fault_proxy
    probe = make_probe(url, timeout_s=1.0)
    probe.run_once()
    proxy.dropping.set()
    slow = threading.Thread(target=probe.run_once, daemon=True)
    slow.start()
    assert wait_until(probe._in_flight.locked, 10)  # the slow probe waits on the silent network
    probe.run_once()
    slow.join(timeout=5)
    assert not slow.is_alive()
    snapshot = probe.health.snapshot()
    assert snapshot.skipped_total == 1
    assert snapshot.probes_total == 2  # the skipped tick is not a probe


def test_errors_never_carry_the_password(make_probe: ProbeFactory) -> None:
    health = ServerHealth()
    probe = make_probe("postgresql://app:hunter2@127.0.0.1:1/app", health=health)
    probe.run_once()
    snapshot = health.snapshot()
    assert snapshot.up is False
    assert snapshot.last_error is not None
    assert "hunter2" not in snapshot.last_error
    assert "://" not in snapshot.last_error


def test_async_driver_url_is_probed_through_psycopg2(
    database_url: URL, make_probe: ProbeFactory
) -> None:
    probe = make_probe(database_url.set(drivername="postgresql+asyncpg"))
    assert probe.engine.dialect.driver == "psycopg2"
    probe.run_once()
    assert probe.health.snapshot().up is True, probe.health.snapshot().last_error


def test_closed_probe_does_nothing(database_url: URL, make_probe: ProbeFactory) -> None:
    probe = make_probe(database_url)
    probe.run_once()
    probe.close()
    probe.run_once()
    assert probe.health.snapshot().probes_total == 1


def test_timeout_must_be_positive(database_url: URL) -> None:
    with pytest.raises(ValueError):
        ServerProbe(database_url, ServerHealth(), timeout_s=0)


def test_an_outage_is_logged_once(
    make_probe: ProbeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    probe = make_probe("postgresql://postgres@127.0.0.1:1/test")
    with caplog.at_level(logging.INFO, logger="monitor.probes.runner"):
        for _ in range(3):
            probe.run_once()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert probe.health.snapshot().errors_total == 3


def test_probe_on_the_scheduler(
    database_url: URL, make_probe: ProbeFactory, admin_engine: Engine
) -> None:
    probe = make_probe(database_url)
    scheduler = start_scheduler(
        [("server-probe", probe.run_once, 0.2)], on_skip=lambda _job_id: probe.record_skipped()
    )
    try:
        assert wait_until(lambda: probe.health.snapshot().probes_total >= 3, 30)
    finally:
        stop_scheduler(scheduler)
    snapshot = probe.health.snapshot()
    assert snapshot.up is True, snapshot.last_error
    assert snapshot.errors_total == 0
    assert probe_backends(admin_engine, probe.application_name) == 1
