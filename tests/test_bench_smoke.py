"""The benchmarks still run against the current code (tiny rounds; figures are not checked)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from bench import pool
from bench.served import at_fixed_rate, crud_cases, free_port, send_requests, start_app, stop_app
from tests.conftest import url_string

ROOT = Path(__file__).resolve().parents[1]


def run_bench(*args: str, database_url: URL, timeout_s: float = 220) -> str:
    env = {**os.environ, "DATABASE_URL": url_string(database_url)}
    result = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("scrape", "--quick"), "| scrape | "),
        (("checkout", "statement", "--quick"), "| statement | "),
        (("poll", "--quick"), "per panel / combined"),
        (("poll", "--sessions", "20", "--quick"), "'server_sessions': {'cap': 50, 'total': "),
        (("probe", "--through", "pgbouncer", "--quick"), "| probe through PgBouncer | "),
        (("request", "--instrument", "bytecodes", "--quick"), "monitor/state/tracker.py"),
        (("workers", "--quick"), "| workers /metrics (8 x 200 connections) | "),
        (
            ("pytest-plugin", "--suite", "sqlalchemy", "--quick"),
            "| pytest --pool-monitor (SQLAlchemy's 1 engine test file(s)) | ",
        ),
    ],
)
def test_scenario_runs_and_ends_with_a_verdict(
    args: tuple[str, ...], expected: str, database_url: URL
) -> None:
    output = run_bench(*args, database_url=database_url)
    assert expected in output
    # Every summary line carries one of the three verdicts.
    rows = [line for line in output.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) >= 2  # the header and at least one scenario
    assert all(re.search(r"\| (met|missed|not resolved) \|$", row) for row in rows[1:]), rows


def test_the_entry_point_names_its_scenarios_and_refuses_unknown_ones(database_url: URL) -> None:
    listing = run_bench("--list", database_url=database_url)
    for name in ("checkout", "statement", "request", "scrape", "poll", "probe", "soak"):
        assert re.search(rf"^{name} ", listing, re.M), listing
    result = subprocess.run(
        [sys.executable, "-m", "bench", "everything"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2 and "unknown scenario everything" in result.stderr


@pytest.mark.parametrize("mode", pool.CYCLE_MODES)
def test_checkout_instruction_programs_run(mode: str, database_url: URL) -> None:
    # valgrind makes the real run take minutes: here each generated program runs plain, briefly.
    program = pool.cycle_program(mode, 20, url_string(database_url))
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.timeout(120)
def test_request_drivers_load_the_served_app(
    database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    # valgrind makes the real run take minutes: here its request driver meets the app served
    # plain, and so does the fixed-rate load of the request scenario, briefly.
    monkeypatch.setattr("bench.served.DATABASE_URL", url_string(database_url))
    port = free_port()
    app = start_app(True, port, launcher=[])
    try:
        base = f"http://127.0.0.1:{port}"
        for case, path in crud_cases(base).items():
            send_requests(base, case, path, 10)
            p50_ms, p99_ms, cpu_ms, _, failed = at_fixed_rate(
                f"{base}{path}", case, 40, app.pid, seconds=1
            )
            assert failed == 0 and 0 < p50_ms <= p99_ms and cpu_ms > 0
        metrics = httpx.get(f"{base}/metrics").text
        checkouts = re.search(r"^sqlalchemy_pool_checkouts_total\{[^}]*\} (\S+)$", metrics, re.M)
        assert checkouts is not None and float(checkouts.group(1)) >= 101  # 1 + 2 x (10 + 40)
    finally:
        stop_app(app)
