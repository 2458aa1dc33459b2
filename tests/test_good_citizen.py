"""In a host app the monitor keeps quiet: its scheduler logs nothing at INFO unless the user
asks, and an unprotected monitor on a non-loopback bind says so once at startup."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL

from monitor import PoolMonitor
from monitor.probes.scheduler import QUIET_LOGGERS
from tests.servers import answers, free_port, wait_for


@pytest.fixture
def engine(database_url: URL) -> Iterator[Engine]:
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


@pytest.fixture
def unset_scheduler_levels() -> Iterator[None]:
    """The scheduler's loggers as a fresh process has them (level unset), restored afterwards."""
    saved = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in saved:
        logging.getLogger(name).setLevel(logging.NOTSET)
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def _run_probes(monitor: PoolMonitor) -> None:
    monitor.start()
    try:
        # A few probe and sweep runs: each used to log two INFO lines through APScheduler.
        assert wait_for(lambda: monitor.server_health.snapshot().up is True, 15)
        first = (
            monitor.server_health.snapshot().probes_total
            if hasattr(monitor.server_health.snapshot(), "probes_total")
            else None
        )
        del first
        threading.Event().wait(0.6)
    finally:
        monitor.stop()


def test_scheduler_stays_quiet_under_an_info_root_logger(
    engine: Engine, caplog: pytest.LogCaptureFixture, unset_scheduler_levels: None
) -> None:
    root_before = logging.getLogger().level
    monitor = PoolMonitor(engine, probe_interval_s=0.1)
    with caplog.at_level(logging.INFO):  # the host app's root logger at INFO
        _run_probes(monitor)
    chatty = [
        r for r in caplog.records
        if r.levelno < logging.WARNING and r.name.startswith(("apscheduler", "monitor.probes"))
    ]  # fmt: skip
    assert chatty == [], [r.getMessage() for r in chatty[:3]]
    assert logging.getLogger().level == root_before  # the root logger is the app's, untouched
    monitor.detach()


def test_a_level_the_user_set_is_kept(
    engine: Engine, caplog: pytest.LogCaptureFixture, unset_scheduler_levels: None
) -> None:
    logging.getLogger("apscheduler").setLevel(logging.INFO)
    monitor = PoolMonitor(engine, probe_interval_s=0.1)
    with caplog.at_level(logging.INFO):
        _run_probes(monitor)
    assert logging.getLogger("apscheduler").level == logging.INFO
    assert any(r.name.startswith("apscheduler") for r in caplog.records)
    monitor.detach()


def _serve(app: FastAPI, host: str) -> None:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: server.started, 20)
        assert answers(f"http://127.0.0.1:{port}/openapi.json")
    finally:
        server.should_exit = True
        thread.join(15)


def _open_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "no dashboard token" in r.getMessage()
    ]


@pytest.mark.parametrize(
    ("host", "token", "warned"),
    [("0.0.0.0", None, True), ("0.0.0.0", "s3cret-token", False), ("127.0.0.1", None, False)],
)
def test_open_dashboard_on_a_public_bind_is_announced_once(
    engine: Engine,
    caplog: pytest.LogCaptureFixture,
    host: str,
    token: str | None,
    warned: bool,
) -> None:
    app = FastAPI()
    monitor = PoolMonitor(engine, probe=False, dashboard_token=token)
    monitor.install(app)
    with caplog.at_level(logging.WARNING, logger="monitor"):
        _serve(app, host)
    found = _open_warnings(caplog)
    if warned:
        assert len(found) == 1, found
        assert "dashboard_token" in found[0] and "/metrics" in found[0] and host in found[0]
    else:
        assert found == []
    monitor.detach()
