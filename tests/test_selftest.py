"""`pool-monitor selftest` against a real demo app process: every scenario is detected."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from sqlalchemy.engine import URL

from tests.conftest import url_string
from tests.test_cli import _free_port


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_selftest_detects_every_scenario(schema_url: URL) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url_string(schema_url),
        "MONITOR_DEMO_ROUTES": "true",
        "MONITOR_LEAK_THRESHOLD_S": "1",
        "MONITOR_PROBE_INTERVAL_S": "0.5",
        "MONITOR_POOL_TIMEOUT_S": "1",
        "MONITOR_SLOW_QUERY_S": "0.2",
    }
    app = subprocess.Popen(
        [sys.executable, "-m", "monitor", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        result = subprocess.run(
            [sys.executable, "-m", "monitor", "selftest", "--url", base],
            capture_output=True,
            text=True,
            timeout=150,
        )
    finally:
        app.send_signal(signal.SIGTERM)
        server_log, _ = app.communicate(timeout=15)
    assert result.returncode == 0, result.stdout + result.stderr + server_log[-3000:]
    for scenario in (
        "leak",
        "gc-leak",
        "idle-in-transaction",
        "slow-query",
        "two-sessions",
        "exhaust",
    ):
        assert any(
            line.startswith(scenario) and " yes " in line for line in result.stdout.splitlines()
        )
    assert "all scenarios detected" in result.stdout


def test_selftest_against_nothing_fails_clearly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "selftest", "--url", f"http://127.0.0.1:{_free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot talk to" in result.stdout
