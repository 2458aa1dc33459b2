"""`pool-monitor selftest` against a real demo app process: every scenario is detected."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy.engine import URL

from tests.conftest import url_string
from tests.servers import app_process, free_port

FAST_DEMO = {
    "MONITOR_DEMO_ROUTES": "true",
    "MONITOR_LEAK_THRESHOLD_S": "1",
    "MONITOR_PROBE_INTERVAL_S": "0.5",
    "MONITOR_POOL_TIMEOUT_S": "1",
    "MONITOR_SLOW_QUERY_S": "0.2",
}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_selftest_detects_every_scenario(schema_url: URL) -> None:
    with app_process("serve", {"DATABASE_URL": url_string(schema_url), **FAST_DEMO}) as app:
        app.wait_ready("/readyz")
        result = subprocess.run(
            [sys.executable, "-m", "monitor", "selftest", "--url", app.base],
            capture_output=True,
            text=True,
            timeout=150,
        )
    assert result.returncode == 0, result.stdout + result.stderr + app.output[-3000:]
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
        [sys.executable, "-m", "monitor", "selftest", "--url", f"http://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot talk to" in result.stdout
