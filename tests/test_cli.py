"""`pool-monitor serve` as a real process: it binds loopback, answers /healthz and CRUD."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
from sqlalchemy.engine import URL

from tests.conftest import url_string


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_answers_health_and_crud(schema_url: URL) -> None:
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": url_string(schema_url), "MONITOR_PROBE_INTERVAL_S": "1"}
    process = subprocess.Popen(
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
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise AssertionError("server did not come up within 30 s")
        created = httpx.post(f"{base}/products", json={"name": "cli", "price": 2}, timeout=5)
        assert created.status_code == 201
        assert (
            httpx.get(f"{base}/products/{created.json()['id']}", timeout=5).json()["name"] == "cli"
        )
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells the signal.
    assert process.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in output
    assert f"http://127.0.0.1:{port}/monitor/" in output


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
    assert "leak_threshold_s" in result.stderr and "greater than 0" in result.stderr


def test_demo_refuses_a_public_bind_without_override() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "demo", "--host", "0.0.0.0", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "MONITOR_DEMO_ALLOW_REMOTE" in result.stderr
