"""The load generator and `pool-monitor load` against the app served by uvicorn on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import URL

from monitor import cli
from monitor.demo.load import (
    LOAD_MIX,
    MAX_DURATION_S,
    LoadSummary,
    LoadTargetUnreachable,
    OperationSummary,
    format_summary,
    nearest_rank,
    run_load,
    start_background_load,
)
from tests.conftest import url_string
from tests.servers import free_port, wait_for


def test_load_against_a_served_app(
    served_app: tuple[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    base, app = served_app
    wanted = {"create_product", "create_user", "list_products"}
    names: set[str] = set()
    # How many requests fit in 2 s depends on the machine's load: run again (bounded) until the
    # mix has shown the operations checked below, rather than asserting a rate.
    for run in range(20):
        summary = run_load(base, 2.0, 4, seed=7 + run, progress=run == 0)
        assert summary.errors == 0, summary.error_kinds
        assert summary.duration_s >= 1.9  # no upper bound: a busy machine answers late
        assert sum(op.requests for op in summary.operations) == summary.requests
        if summary.requests:
            assert 0 < summary.p50_ms <= summary.p95_ms <= summary.p99_ms
        for op in summary.operations:
            assert op.p50_ms <= op.p95_ms <= op.p99_ms
        names |= {op.name for op in summary.operations}
        if wanted <= names:
            break
    assert names <= set(LOAD_MIX) and wanted <= names, names
    # Rows were really written, and every connection comes back (the session dependency may
    # close a moment after the response went out).
    assert httpx.get(f"{base}/users", timeout=5).json()["total"] > 0
    assert wait_for(lambda: app.state.engine.pool.checkedout() == 0, 30)

    progress = capsys.readouterr().err
    assert "\r[" in progress and "req/s now" in progress and progress.endswith("\n")
    assert "req/s overall" in progress.splitlines()[-1]
    # Longer than the app's pool timeout (1 s here), so a 503 arrives before the client gives up.
    assert summary.request_timeout_s == 30.0 and summary.unavailable == 0


def test_summary_is_an_aligned_table() -> None:
    summary = LoadSummary(
        base_url="http://127.0.0.1:8000",
        duration_s=2.0,
        concurrency=4,
        requests=1234,
        errors=3,
        p50_ms=1.5,
        p95_ms=4.3,
        p99_ms=12.0,
        operations=(
            OperationSummary("create_user", 200, 3, 2.0, 5.0, 13.0),
            OperationSummary("list_products", 1034, 0, 1.4, 4.0, 11.5),
        ),
        error_kinds=(("create_user: HTTP 503", 5), ("create_user: ReadTimeout", 3)),
        unavailable=5,
    )
    text = format_summary(summary)
    lines = text.splitlines()
    table = lines[lines.index("") + 1 : lines.index("not answered as expected:") - 1]
    assert table[0].split()[:3] == ["operation", "requests", "failed"]
    assert table[0].endswith("p50 ms  p95 ms  p99 ms")
    assert table[-1].split() == ["total", "1234", "3", "1.5", "4.3", "12.0"]
    assert len({len(line) for line in table}) == 1, "columns are not aligned"
    assert "617.0 req/s" in text and "create_user: HTTP 503     5" in text
    assert "1226 answered as expected, 5 answered 503" in text
    assert "3 failed unexpectedly" in text and "request timeout 30 s" in text


def test_unreachable_target_is_refused_before_the_run() -> None:
    port = free_port()  # nothing listens there
    # Refused before the run: a run of MAX_DURATION_S would end in the test's timeout instead.
    with pytest.raises(LoadTargetUnreachable, match=f"127.0.0.1:{port}"):
        run_load(f"http://127.0.0.1:{port}", MAX_DURATION_S, 2, progress=False)


@pytest.mark.parametrize(
    ("duration", "concurrency"), [(0, 1), (-1, 1), (float("nan"), 1), (1, 0), (1, 10_000)]
)
def test_bad_run_parameters_are_refused(duration: float, concurrency: int) -> None:
    with pytest.raises(ValueError):
        run_load("http://127.0.0.1:9", duration, concurrency, progress=False)


def test_cli_load_against_a_closed_port_exits_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code = cli.main(["load", "--url", f"http://127.0.0.1:{port}", "--duration", "1"])
    assert code != 0
    err = capsys.readouterr().err
    assert f"pool-monitor load: cannot reach http://127.0.0.1:{port}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("args", [["--duration", "0"], ["--concurrency", "0"], ["--duration", "x"]])
def test_cli_load_rejects_bad_arguments(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["load", *args])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://127.0.0.1", "http://[::1"])
def test_cli_load_rejects_a_malformed_url(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["load", "--url", url, "--duration", "1"]) == 2
    assert "pool-monitor load: invalid URL" in capsys.readouterr().err


def test_cli_load_prints_the_summary(
    served_app: tuple[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    base, _ = served_app
    code = cli.main(
        ["load", "--url", base, "--duration", "1", "--concurrency", "2", "--no-progress"]
    )
    out, err = capsys.readouterr()
    assert code == 0
    assert "operation" in out and "total" in out and "req/s" in out
    assert "\r[" not in err


@pytest.mark.pool_monitor_allow(
    reason="the test holds the whole pool: every CRUD request times out with 503",
    kinds="pool_timeout",
)
def test_cli_load_exits_zero_with_http_errors(
    served_app: tuple[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    base, app = served_app
    # The whole pool held by someone else: every CRUD request times out with 503.
    connections = [app.state.engine.connect() for _ in range(5)]
    try:
        code = cli.main(
            ["load", "--url", base, "--duration", "1", "--concurrency", "2", "--no-progress"]
        )
    finally:
        for connection in connections:
            connection.close()
    out = capsys.readouterr().out
    # Waited past the pool timeout (1 s): the app's 503s are answers, the run succeeded.
    assert code == 0
    assert "not answered as expected:" in out and "HTTP 503" in out
    assert "0 failed unexpectedly" in out and "ReadTimeout" not in out


@pytest.mark.pool_monitor_allow(
    reason="the test holds the whole pool: requests wait past the client's timeout",
    kinds="pool_timeout",
)
def test_cli_load_exits_non_zero_when_requests_fail_unexpectedly(
    served_app: tuple[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    base, app = served_app
    # A client timeout shorter than the pool timeout (1 s): no answer at all, a real failure.
    connections = [app.state.engine.connect() for _ in range(5)]
    try:
        code = cli.main(
            ["load", "--url", base, "--duration", "1", "--concurrency", "2", "--no-progress",
             "--timeout", "0.3"]
        )  # fmt: skip
    finally:
        for connection in connections:
            connection.close()
    captured = capsys.readouterr()
    assert code == 1
    assert "ReadTimeout" in captured.out
    assert "request(s) failed unexpectedly" in captured.err
    # The app still answers the requests the client gave up on: they end before the test does.
    assert wait_for(
        lambda: app.state.in_flight.count == 0 and app.state.engine.pool.checkedout() == 0, 30
    )


def test_background_load_is_gentle_and_stops(served_app: tuple[str, Any]) -> None:
    base, app = served_app
    monitor = app.state.pool_monitor

    def checkouts() -> int:
        return int(monitor.snapshot()["pool"]["counters"]["checkouts"]) - before

    before = monitor.snapshot()["pool"]["counters"]["checkouts"]
    started = time.monotonic()
    stop = start_background_load(base, rate_per_s=5, seed=1)
    assert wait_for(lambda: checkouts() >= 2, 30)
    stop()
    ran_s = time.monotonic() - started
    done = checkouts()
    # Gentle: at most its rate (a busy machine only sends fewer); a request may check out twice.
    assert done <= 2 * (5 * ran_s + 3), (done, ran_s)
    time.sleep(1.0)
    assert checkouts() - done <= 2  # stopped: at most the request in flight still lands


@pytest.mark.timeout(180)
def test_demo_command_starts_the_background_load(schema_url: URL) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url_string(schema_url), "MONITOR_PROBE_INTERVAL_S": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", "demo", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90  # a busy machine starts the app slowly
        checkouts = 0
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"{base}/monitor/api/snapshot", timeout=1)
                checkouts = response.json()["pool"]["counters"]["checkouts"]
                if checkouts >= 3:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.25)
        assert checkouts >= 3, "no background load within 90 s"
        # The demo routes are on in `demo`.
        released = httpx.post(f"{base}/demo/release", headers={"HX-Request": "true"}, timeout=5)
        assert released.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
    assert process.returncode in (0, -signal.SIGTERM)
    assert "background load running" in output
    assert "demo scenario routes are enabled" in output
    # One clear block ends the start-up; no access log line per request by default.
    assert f"dashboard   {base}/monitor/" in output and f"metrics     {base}/metrics" in output
    assert f"{base}/demo/leak" in output
    assert '"GET /products' not in output and '"GET /users' not in output


def test_percentile_is_a_measured_value_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert nearest_rank(values, 0.99) == 99.0
    assert nearest_rank(values, 0.50) == 50.0
    assert nearest_rank(values, 1.0) == 100.0
    assert nearest_rank([3.0], 0.99) == 3.0
    assert nearest_rank(values, 0.07) == 7.0  # 0.07 x 100 is a hair above 7 in floats
    with pytest.raises(ValueError):
        nearest_rank([], 0.5)
