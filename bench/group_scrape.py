"""Several workers as one monitor: what a `/metrics` scrape and the per-second publish cost.

Eight workers each holding 200 tracked connections (half checked out, with their sites) and
50 slow-query shapes: seven publish synthetic reports into a group directory, the eighth is a
real `PoolMonitor` (on an engine that never connects, probe off) that answers. Times
`generate_latest` and a whole `GET /metrics` through the ASGI app, then the CPU one publish
takes, as a share of one core: a worker publishes once a second, or less often when a publish
costs more than 1% of a core (a huge pool); requests never publish, so the rate of requests
does not change this cost.
Goals: median `/metrics` <= 30 ms; publishing <= 1% of one core.
Run: `.venv/bin/python bench/group_scrape.py` (no database needed).
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from sqlalchemy import create_engine

from monitor.background import PUBLISH_CPU_SHARE
from monitor.pool_monitor import PoolMonitor
from monitor.process_group import PUBLISH_INTERVAL_S, STALE_AFTER_S, GroupMember
from monitor.state.holders import RequestScope
from monitor.state.records import PoolStats
from monitor.state.server import ServerHealth, ServerSample, ServerSettings
from monitor.state.tracker import PoolTracker

WORKERS = 8
CONNECTIONS = 200
SLOW_SHAPES = 50
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "100"))
SCRAPE_GOAL_MS = 30.0
PUBLISH_GOAL_SHARE = 0.01


def _site() -> Any:
    frame = sys._getframe()
    return ((frame.f_code, frame.f_lasti),)


def fill(tracker: PoolTracker, first_pid: int, connections: int) -> None:
    """`connections` open slots, every other one checked out by a request, some slow shapes."""
    for index in range(connections):
        slot = tracker.new_slot()
        tracker.connected(slot, first_pid + index, 0.004)
        if index % 2 == 0:
            request = RequestScope.named("GET", "/items/{item_id}", f"req-{first_pid}-{index}")
            tracker.checkout(slot, request, None, _site(), waited_s=0.001)
    for index in range(SLOW_SHAPES):
        tracker.slow_query(f"fp{index}", f"SELECT * FROM t{index} WHERE id = ?", 0.7, "GET /x")


def stats(connections: int) -> PoolStats:
    return PoolStats(
        "QueuePool", connections, 0, connections, connections // 2, connections // 2, 0,
        30.0, 3600.0, True, False,
    )  # fmt: skip


def answering_monitor(directory: Path, connections: int) -> PoolMonitor:
    engine = create_engine(
        "postgresql+psycopg2://app@127.0.0.1:1/app", pool_size=connections, max_overflow=0
    )
    monitor = PoolMonitor(engine, probe=False, capture_sites=False, pool_name="app")
    fill(monitor.tracker, 100_000, connections)
    monitor.group = GroupMember(directory, "app")
    settings = ServerSettings("15.6", 150006, 2_000, 3, 0, None, None, None, None)
    health = ServerHealth()
    health.record_success(ServerSample(time.time(), 0.01, "app", (), 1, settings))
    monitor.server_health = health
    return monitor


def publish_others(directory: Path) -> None:
    for worker in range(1, WORKERS):
        tracker = PoolTracker("app", leak_threshold_s=10.0, slow_query_s=0.5)
        tracker.worker = worker
        fill(tracker, worker * 1_000, CONNECTIONS)
        member = GroupMember(directory, "app", pid=worker, alive=lambda _pid: True)
        member.publish(lambda t=tracker, m=member: m.report(t.snapshot(), stats(CONNECTIONS)))


def timed(work: Callable[[], object], rounds: int) -> tuple[float, float, float]:
    """Median and p95 wall milliseconds, and median CPU milliseconds, of `work`."""
    walls, cpus = [], []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        cpus.append((time.process_time() - cpu) * 1000)
        walls.append((time.perf_counter() - wall) * 1000)
    walls.sort()
    return statistics.median(walls), walls[int(len(walls) * 0.95) - 1], statistics.median(cpus)


def main() -> None:
    logging.getLogger("monitor").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        publish_others(directory)
        monitor = answering_monitor(directory, CONNECTIONS)
        app = FastAPI()
        monitor.install(app)
        registry = app.state.metrics_registry
        view = monitor.view()
        assert view.group is not None and len(view.group.workers) == WORKERS
        body = generate_latest(registry)
        size = sum(p.stat().st_size for p in directory.rglob("detail-*.json"))
        print(
            f"group: {WORKERS} workers x {CONNECTIONS} connections = {len(view.pool.connections)}"
            f" merged ({len(view.held)} checked out); reports {size / WORKERS / 1024:.0f} KiB each;"
            f" exposition {len(body):,} bytes"
        )
        with TestClient(app) as client:
            for _ in range(5):
                client.get("/metrics")
            rows = [
                ("generate_latest(registry)", timed(lambda: generate_latest(registry), ROUNDS)),
                ("GET /metrics (ASGI)", timed(lambda: client.get("/metrics"), ROUNDS)),
                ("monitor.view() (dashboard)", timed(monitor.view, ROUNDS)),
                (f"publish, {CONNECTIONS} connections", timed(monitor.publish, ROUNDS)),
            ]
            monitor.stop()
        small = answering_monitor(directory / "small", 10)
        rows.append(("publish, 10 connections", timed(small.publish, ROUNDS)))
    print(f"{'':30} {'median ms':>10} {'p95 ms':>8} {'CPU ms':>8}")
    for name, (med, p95, cpu) in rows:
        print(f"{name:30} {med:10.2f} {p95:8.2f} {cpu:8.2f}")
    scrape = rows[1][1][0]
    print(
        f"goal: median GET /metrics <= {SCRAPE_GOAL_MS:.0f} ms: "
        f"{'met' if scrape <= SCRAPE_GOAL_MS else 'MISSED'} ({scrape:.1f} ms)"
    )
    for name, (_med, _p95, cpu) in rows[3:]:
        # The publisher waits cost / PUBLISH_CPU_SHARE after each publish, at least a second.
        every_s = max(PUBLISH_INTERVAL_S, min(cpu / 1000 / PUBLISH_CPU_SHARE, STALE_AFTER_S / 3))
        share = cpu / 1000 / math.ceil(every_s)  # the scheduler ticks each whole second
        verdict = "met" if share <= PUBLISH_GOAL_SHARE else "MISSED"
        print(
            f"goal: {name} <= 1% of a core: {verdict} ({cpu / 10:.2f}% at one a second; "
            f"published every {math.ceil(every_s)} s: {share:.2%})"
        )


if __name__ == "__main__":
    main()
