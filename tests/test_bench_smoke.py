"""The benchmarks still run against the current code (tiny rounds; figures are not checked)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL

from bench import checkout_instructions
from bench.overhead import at_fixed_rate, crud_cases, free_port, start_app, stop_app
from bench.overhead_instructions import send_requests
from bench.parts_app import ENABLED_PARTS, create_part_app
from bench.toggle_app import create_toggled_app
from monitor.instrumentation.attribution import AttributionMiddleware
from tests.conftest import url_string

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("scrape.py", "median full scrape"),
        ("checkout.py", "(b)"),
        ("dashboard_poll.py", "per panel / combined"),
        ("overhead_bytecodes.py", "monitor/state/tracker.py"),
    ],
)
def test_benchmark_runs(script: str, expected: str, database_url: URL) -> None:
    env = {
        **os.environ,
        "BENCH_ROUNDS": "3",
        "BENCH_REQUESTS": "10",
        "DATABASE_URL": url_string(database_url),
    }
    result = subprocess.run(
        [sys.executable, str(BENCH / script)], env=env, capture_output=True, text=True, timeout=220
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout


@pytest.mark.parametrize("mode", ["bare", "monitored, site capture off", "monitored"])
def test_instruction_benchmark_programs_run(mode: str, database_url: URL) -> None:
    # valgrind makes the real run take minutes: here each generated program runs plain, briefly.
    program = checkout_instructions.cycle_program(mode, 20).replace(
        repr(checkout_instructions.URL), repr(url_string(database_url))
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_toggled_benchmark_app_detaches_and_reattaches_the_monitor(
    database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", url_string(database_url))
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        app = create_toggled_app()
        with TestClient(app) as client:
            engine = app.state.engine
            first = app.state.pool_monitor
            assert "_do_get" in vars(engine.pool)  # attached: the checkout wrapper is in place
            signal.raise_signal(signal.SIGUSR1)
            assert app.state.pool_monitor is None and "_do_get" not in vars(engine.pool)
            assert client.get("/healthz").status_code == 200
            signal.raise_signal(signal.SIGUSR1)
            second = app.state.pool_monitor
            assert second is not None and second is not first
            with engine.connect():
                pass
            assert second.tracker.snapshot().counters.checkouts == 1
            second.detach()
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.mark.timeout(120)
def test_overhead_benchmark_drivers_load_the_served_app(database_url: URL) -> None:
    # valgrind makes the real run take minutes: here its request driver meets the app served
    # plain, and so does the fixed-rate load of `bench/overhead.py`, briefly.
    port = free_port()
    app = start_app(True, port, launcher=[], extra_env={"DATABASE_URL": url_string(database_url)})
    try:
        base = f"http://127.0.0.1:{port}"
        for case, (path, _) in crud_cases(base, None).items():
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


@pytest.mark.parametrize("part", ["off", "modules", "middleware", "attached", "on"])
def test_the_parts_benchmark_app_serves_each_part(
    part: str, database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", url_string(database_url))
    monkeypatch.setenv("MONITOR_ENABLED", "true" if part in ENABLED_PARTS else "false")
    monkeypatch.setenv("BENCH_PART", part)
    app = create_part_app()
    with TestClient(app) as client:
        created = client.post("/products", json={"name": f"part {part}", "price": 1})
        assert created.status_code == 201, created.text
        monitor = getattr(app.state, "pool_monitor", None)
        middleware = {entry.cls for entry in app.user_middleware}
        assert (AttributionMiddleware in middleware) == (part != "off" and part != "modules")
        assert (monitor is not None) == (part in ENABLED_PARTS)
        if monitor is not None:
            # "attached" keeps the wrappers and drops the background work; "on" keeps both.
            assert monitor.tracker.snapshot().counters.checkouts >= 1
            assert (monitor._background is not None) == (part == "on")


def test_the_parts_benchmark_app_refuses_an_unknown_part(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_PART", "everything")
    with pytest.raises(SystemExit, match="BENCH_PART must be one of"):
        create_part_app()
