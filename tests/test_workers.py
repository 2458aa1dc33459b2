"""Several worker processes behind one port (uvicorn --workers, gunicorn), and several instances:
every scrape and snapshot covers the whole group, counters never go down, one probe per group,
no false orphans."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from monitor.background import PROBE_APPLICATION_NAME
from monitor.metrics import names
from monitor.selftest import DEMO_HEADERS
from tests.conftest import url_string
from tests.servers import answers, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

WORKERS = 4


class Group:
    """One server process group (a master and its workers) on a free port."""

    def __init__(self, argv: list[str], env: dict[str, str], port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.env = env
        self.process = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its workers are stopped with it
        )

    def snapshot(self) -> dict[str, Any]:
        # A new connection per request: any worker may answer.
        response = httpx.get(self.base + "/monitor/api/snapshot", timeout=10)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def scrape(self) -> str:
        response = httpx.get(self.base + "/metrics", timeout=10)
        response.raise_for_status()
        return response.text

    def reports(self) -> list[dict[str, Any]]:
        """The summaries the workers published (the group directory is under TMPDIR)."""
        found = []
        for path in Path(self.env["TMPDIR"]).glob("pool-monitor-*/group-*/*/worker-*.json"):
            with contextlib.suppress(OSError, ValueError):
                found.append(json.loads(path.read_text()))
        return found

    def wait_all_workers(self, count: int = WORKERS, timeout_s: float = 60) -> list[int]:
        """Until a snapshot covers `count` live workers; returns their pids."""
        seen: list[int] = []

        def covered() -> bool:
            seen[:] = self.snapshot()["group"]["workers"]
            return len(seen) == count

        assert wait_for(covered, timeout_s, 0.3), f"workers covered: {seen}"
        return sorted(seen)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


@pytest.fixture
def group_env(schema_url: URL, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MONITOR_GROUP_DIR",)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        DATABASE_URL=url_string(schema_url),
        MONITOR_DEMO_ROUTES="true",
        MONITOR_PROBE_INTERVAL_S="0.5",
        MONITOR_LEAK_THRESHOLD_S="1",
        MONITOR_POOL_SIZE="3",
        MONITOR_MAX_OVERFLOW="2",
        MONITOR_APPLICATION_NAME=f"workers-{tmp_path.name[-20:]}",
        TMPDIR=str(tmp_path),  # the group directory is derived under it
    )
    return env


def uvicorn_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "monitor.app:create_app", "--factory",
        "--workers", str(WORKERS), "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning",
    ]  # fmt: skip


def gunicorn_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "monitor.app:create_app()",
        "-k", "uvicorn.workers.UvicornWorker", "-w", str(WORKERS),
        "-b", f"127.0.0.1:{port}", "--log-level", "warning",
    ]  # fmt: skip


@contextmanager
def running(argv_of: Any, env: dict[str, str]) -> Iterator[Group]:
    port = free_port()
    group = Group(argv_of(port), env, port)
    try:
        assert wait_for(lambda: answers(group.base + "/healthz"), 60, 0.2), "never answered"
        yield group
    finally:
        httpx.post(group.base + "/demo/release", headers=DEMO_HEADERS, timeout=5)
        group.stop()


def metric(body: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in body.splitlines():
        match = re.match(rf"^{name}(\{{[^}}]*\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


def probe_sessions(database_url: URL, ports: set[int]) -> int:
    """The group's probe sessions on the server: by application_name, and by client port when
    the connection is TCP (another group's probe may share a server)."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT client_port FROM pg_stat_activity WHERE application_name = :name"),
                {"name": PROBE_APPLICATION_NAME},
            ).all()
    finally:
        engine.dispose()
    return sum(1 for (port,) in rows if port is None or port < 0 or port in ports)


def local_ports(pids: list[int]) -> set[int]:
    ports = set()
    for pid in pids:
        for connection in psutil.Process(pid).net_connections(kind="tcp"):
            if connection.laddr:
                ports.add(connection.laddr.port)
    return ports


def leak_everywhere(group: Group) -> None:
    """A leak held by one worker is in each of 20 scrapes and 20 snapshots, whoever answers."""
    response = httpx.post(group.base + "/demo/leak?hold_s=60", headers=DEMO_HEADERS, timeout=10)
    assert response.status_code == 200, response.text
    assert wait_for(lambda: metric(group.scrape(), names.LEAKED_CONNECTIONS) >= 1, 20)
    # The holder noticed it; the others see it once its next report is out (a second or so).
    assert wait_for(lambda: any(r["pool"]["leaks"] for r in group.reports()), 20, 0.1)
    answered = set()
    for _ in range(20):
        body = group.scrape()
        if metric(body, names.LEAKED_CONNECTIONS) < 1:
            state = group.snapshot()  # what the group looked like right after
            pytest.fail(f"leak missing in a scrape: {state['group']}, {state['pool']['leaks']}")
        assert metric(body, names.CONNECTION_COUNT, **{names.STATE: names.STATE_USED}) >= 1
        data = group.snapshot()
        answered.add(data["group"]["answered_by"])
        assert len(data["pool"]["leaks"]) >= 1, "leak missing in a snapshot"
        assert any(h["connection"]["worker"] for h in data["held"])
        assert data["orphans"] == []
    # Not one worker answering everything: keep asking until another one does (bounded).
    assert wait_for(lambda: answered.add(group.snapshot()["group"]["answered_by"]) or
                    len(answered) > 1, 60, 0.01), "only one worker ever answered"  # fmt: skip


def counters_never_go_down(group: Group, kill: bool) -> None:
    checkouts: list[float] = []
    for round_ in range(20):
        httpx.get(group.base + "/products", timeout=10)
        checkouts.append(metric(group.scrape(), names.CHECKOUTS_TOTAL))
        if kill and round_ == 8:
            workers = group.wait_all_workers()
            victim = workers[-1]
            os.kill(victim, signal.SIGKILL)
            # The master starts a replacement; the group covers four workers again.
            assert wait_for(
                lambda v=victim: v not in (w := group.wait_all_workers()) and len(w) == WORKERS,
                60,
                0.3,
            )
    assert checkouts == sorted(checkouts), f"a counter went down: {checkouts}"
    assert checkouts[-1] > checkouts[0]


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_workers_are_one_monitor(server: str, group_env: dict[str, str], database_url: URL) -> None:
    argv = uvicorn_argv if server == "uvicorn" else gunicorn_argv
    with running(argv, group_env) as group:
        workers = group.wait_all_workers()
        leak_everywhere(group)
        counters_never_go_down(group, kill=False)
        # One probe for the whole group, from one of its workers.
        assert wait_for(lambda: probe_sessions(database_url, local_ports(workers)) == 1, 20)
        counters_never_go_down(group, kill=True)
        after = group.wait_all_workers()
        assert wait_for(lambda: probe_sessions(database_url, local_ports(after)) == 1, 20)
        data = group.snapshot()
        assert data["group"]["retired_workers"] >= 1
        assert data["server"]["up"] is True


def test_no_false_orphans_across_instances_and_parallel_query(
    group_env: dict[str, str], database_url: URL, schema_url: URL
) -> None:
    """Two instances sharing one application_name, each several workers, with a parallel query
    run by a session of that same name: none of them is anyone's orphan."""
    name = group_env["MONITOR_APPLICATION_NAME"]
    engine = create_engine(schema_url, connect_args={"application_name": name})
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE big AS SELECT g AS n FROM generate_series(1, 400000) g"))
        conn.execute(text("ANALYZE big"))
    with running(uvicorn_argv, group_env) as first, running(uvicorn_argv, group_env) as second:
        for group in (first, second):
            group.wait_all_workers()
            response = httpx.post(group.base + "/demo/idle-in-transaction?hold_s=60",
                                  headers=DEMO_HEADERS, timeout=10)  # fmt: skip
            assert response.status_code == 200
        query = "SELECT count(*) FROM big a, big b WHERE a.n < 300 AND b.n % 7 = 3"
        runner = subprocess.Popen([sys.executable, "-c", _PARALLEL_SCRIPT, url_string(schema_url),
                                   name, query])  # fmt: skip
        try:
            for group in (first, second):

                def parallel_seen(group: Group = group) -> bool:
                    data = group.snapshot()
                    sample = data["server"]["last_sample"] or {"backends": []}
                    types = {b["backend_type"] for b in sample["backends"]}
                    return "parallel worker" in types and len(data["held"]) >= 1

                assert wait_for(parallel_seen, 60, 0.2), "the probe never saw a parallel worker"
                for _ in range(10):
                    data = group.snapshot()
                    assert data["orphans"] == [], data["orphans"]
                    assert metric(group.scrape(), names.ORPHAN_SESSIONS) == 0
        finally:
            runner.kill()
            runner.wait(10)
    engine.dispose()


_PARALLEL_SCRIPT = """
import sys, psycopg2
from sqlalchemy.engine import make_url
url = make_url(sys.argv[1]).set(drivername="postgresql")
conn = psycopg2.connect(url.render_as_string(hide_password=False), application_name=sys.argv[2])
cur = conn.cursor()
for s in ("parallel_setup_cost = 0", "parallel_tuple_cost = 0", "min_parallel_table_scan_size = 0",
          "max_parallel_workers_per_gather = 2", "statement_timeout = 60000"):
    cur.execute("SET " + s)
while True:
    cur.execute(sys.argv[3])
"""
