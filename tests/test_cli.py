"""`pool-monitor serve` as a real process: it binds loopback, answers /healthz and CRUD."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from sqlalchemy.engine import URL

from tests.conftest import url_string
from tests.servers import AppProcess, free_port, wait_for


def test_serve_answers_health_and_crud(schema_url: URL) -> None:
    app = AppProcess(
        "serve", {"DATABASE_URL": url_string(schema_url), "MONITOR_PROBE_INTERVAL_S": "1"}
    )
    try:
        app.wait_ready()
        created = httpx.post(f"{app.base}/products", json={"name": "cli", "price": 2}, timeout=5)
        assert created.status_code == 201
        assert (
            httpx.get(f"{app.base}/products/{created.json()['id']}", timeout=5).json()["name"]
            == "cli"
        )
        assert app.wait_for_output(f"http://127.0.0.1:{app.port}/monitor/")  # start-up block
    finally:
        status = app.stop()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells the signal.
    assert status in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in app.output


def test_invalid_setting_is_a_clear_startup_error() -> None:
    env = {**os.environ, "MONITOR_LEAK_THRESHOLD_S": "-3"}
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert (
        "MONITOR_LEAK_THRESHOLD_S" in result.stderr
        and "greater than or equal to 0.1" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_demo_refuses_a_public_bind_without_override() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "demo", "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "MONITOR_DEMO_ALLOW_REMOTE" in result.stderr


def test_a_taken_port_is_reported_before_anything_starts() -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        # No DATABASE_URL: had it started, the embedded database would come first.
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        result = subprocess.run(
            [sys.executable, "-m", "monitor", "demo"],
            env={**env, "PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "--port N or PORT=N" in result.stderr
    assert "embedded" not in result.stdout + result.stderr
    assert "Started server process" not in result.stdout + result.stderr


def test_port_from_the_environment_and_a_bad_one_refused(schema_url: URL) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "serve"],
        env={**os.environ, "PORT": "http"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "PORT='http'" in result.stderr
    app = AppProcess("serve", {"DATABASE_URL": url_string(schema_url)}, port_from_env=True)
    try:
        app.wait_ready()
        assert httpx.get(f"{app.base}/products", timeout=5).status_code == 200
        # The start-up block comes once the app answers (a thread polls /healthz for it).
        assert app.wait_for_output(f"dashboard   http://127.0.0.1:{app.port}/monitor/")
    finally:
        app.stop()
    # serve keeps the access log.
    assert '"GET /products HTTP/1.1" 200' in app.output


def test_serve_with_workers_is_one_monitor(schema_url: URL, tmp_path: Path) -> None:
    """`serve --workers 2`: every snapshot covers both workers, whichever answers."""
    env = {
        "DATABASE_URL": url_string(schema_url),
        "MONITOR_PROBE_INTERVAL_S": "1",
        "TMPDIR": str(tmp_path),  # the group directory is derived under it
    }
    app = AppProcess("serve", env, "--workers", "2")
    try:
        app.wait_ready(timeout_s=60)

        def both_covered() -> bool:
            snapshot = httpx.get(f"{app.base}/monitor/api/snapshot", timeout=5).json()
            return len(snapshot["group"]["workers"]) == 2

        assert wait_for(both_covered, 60, 0.3)
    finally:
        status = app.stop()
    assert status in (0, -signal.SIGTERM)
    assert "2 workers on" in app.output
