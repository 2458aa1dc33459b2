"""SIGTERM under load: `pool-monitor serve` exits in time and leaves no backend behind."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from monitor.background import PROBE_APPLICATION_NAME
from tests.conftest import url_string
from tests.reliability.conftest import Load, serve_process, unique_name, wait_for

EXIT_BOUND_S = 10.0
# Every session the app opens: its pool (unique name), the probe, and readiness checks.
MONITOR_NAMES = (PROBE_APPLICATION_NAME, "pool-monitor-readyz")


def _client_ports(pid: int, server_port: int) -> set[int]:
    """Local ports of this process's TCP connections to the database server."""
    return {
        conn.laddr.port
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == server_port
    }


def _sessions(admin: Engine, name: str, ports: set[int]) -> list[dict[str, Any]]:
    """Backends of the app: its pool by name, the monitor's own ones by the client port seen."""
    with admin.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT pid, application_name, client_port, state FROM pg_stat_activity "
                "WHERE application_name = :name "
                "OR (application_name = ANY(:monitor) AND client_port = ANY(:ports))"
            ),
            {"name": name, "monitor": list(MONITOR_NAMES), "ports": sorted(ports)},
        )
        return [dict(row._mapping) for row in rows]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_sigterm_under_load_exits_and_closes_every_backend(
    schema_url: URL, admin_engine: Engine, tmp_path: Path
) -> None:
    if not schema_url.host:
        pytest.skip("needs a TCP database (DATABASE_URL): backends are matched by client port")
    name = unique_name("pm-term")
    env = {
        "DATABASE_URL": url_string(schema_url),
        "MONITOR_APPLICATION_NAME": name,
        "MONITOR_PROBE_INTERVAL_S": "0.5",
        "MONITOR_POOL_SIZE": "5",
        "MONITOR_MAX_OVERFLOW": "5",
    }
    with serve_process(env, tmp_path) as served:
        pid = served.process.pid
        assert wait_for(
            lambda: (
                httpx.get(f"{served.base}/monitor/api/snapshot", timeout=2).json()["server"]["up"]
                is True
            ),
            10,
        )
        load = Load(served.base, 10, timeout_s=10, max_duration_s=30).start()
        try:
            time.sleep(2.0)
            ports = _client_ports(pid, schema_url.port or 5432)
            before = _sessions(admin_engine, name, ports)
            signalled_at = time.monotonic()
            served.process.send_signal(signal.SIGTERM)
            try:
                served.process.wait(EXIT_BOUND_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running {EXIT_BOUND_S} s after SIGTERM")
            exit_s = time.monotonic() - signalled_at
        finally:
            load.stop()
        time.sleep(2.0)
        after = _sessions(admin_engine, name, ports)
        output = served.output()

    ok = sum(1 for o in load.outcomes if o.status is not None and o.status < 400)
    print(
        f"\nshutdown: exit {exit_s:.2f} s after SIGTERM, {ok} requests served, "
        f"{len(before)} backends before ({sorted({b['application_name'] for b in before})}), "
        f"{len(after)} after"
    )
    assert ok > 50, "the load did not run"
    assert {b["application_name"] for b in before} >= {name, PROBE_APPLICATION_NAME}
    assert served.process.returncode in (0, -signal.SIGTERM)
    assert exit_s <= EXIT_BOUND_S
    assert after == [], f"backends left 2 s after exit: {after}"
    assert "Application shutdown complete" in output
    assert "garbage collector is trying to clean up" not in output
    assert "Traceback" not in output
