"""Cost of one `/metrics` scrape on a large model: 1,000 tracked connections, 10,000 slow queries.

Drives `PoolTracker` through its public methods with fake slots and a fake clock, joins it with a
literal server sample of 1,000 backends, and times `generate_latest` (the view is taken inside).
Goal: median <= 20 ms. Run: `.venv/bin/python bench/scrape.py` (no database needed).
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry, generate_latest

from monitor.metrics.collector import MonitorCollector
from monitor.pool_monitor import PoolMonitor
from monitor.state.holders import RequestScope
from monitor.state.records import PoolStats
from monitor.state.server import (
    ACTIVITY_STATES,
    Backend,
    ServerHealthSnapshot,
    ServerSample,
    ServerSettings,
)
from monitor.state.tracker import PoolTracker
from monitor.state.view import AppInfo, MonitorView, build_view

CONNECTIONS = 1_000
CHECKED_OUT = 600
SLOW_QUERIES = 10_000
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "200"))
GOAL_MS = 20.0
FIRST_PID = 10_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _site() -> Any:
    # A real (code, instruction offset) pair, as the listener records at checkout.
    frame = sys._getframe()
    return ((frame.f_code, frame.f_lasti),)


def build_tracker(clock: FakeClock) -> PoolTracker:
    tracker = PoolTracker(
        "app", leak_threshold_s=10.0, slow_query_s=0.5, clock=clock, wall_clock=lambda: clock.now
    )
    for index in range(CONNECTIONS):
        slot = tracker.new_slot()
        tracker.connected(slot, FIRST_PID + index, 0.004)
        if index < CHECKED_OUT:
            request = RequestScope.named("GET", f"/items/{index}", f"req-{index}")
            tracker.checkout(slot, request, None, _site())
            tracker.wait_failed(0.002, timed_out=False)
        clock.now += 0.001
    clock.now += 30.0  # every checkout is now past the leak threshold
    states = {FIRST_PID + i: ACTIVITY_STATES[i % 3] for i in range(CONNECTIONS)}
    tracker.sweep(states)
    for index in range(SLOW_QUERIES):
        tracker.slow_query(f"fp{index}", f"SELECT * FROM t{index} WHERE id = ?", 0.7, "GET /items")
    return tracker


def build_server(clock: FakeClock) -> ServerHealthSnapshot:
    backends = tuple(
        Backend(
            pid=FIRST_PID + i,
            datname="app",
            usename="app",
            application_name="pool-monitor-app",
            client_addr="10.0.0.2",
            backend_type="client backend",
            state=ACTIVITY_STATES[i % 3],
            wait_event_type=None,
            wait_event=None,
            backend_age_s=100.0,
            xact_age_s=float(i % 50) if i % 3 else None,
            query_age_s=1.0,
            state_age_s=1.0,
            query="SELECT 1",
            query_hidden=False,
            blocked_by=(FIRST_PID,) if i % 97 == 1 else (),
        )
        for i in range(CONNECTIONS)
    )
    settings = ServerSettings("15.6", 150006, 2_000, 3, 0, None, None, None, None)
    sample = ServerSample(clock.now, 0.01, "app", backends, CONNECTIONS + 1, settings)
    return ServerHealthSnapshot(
        up=True,
        last_sample=sample,
        errors_total=2,
        last_error="timeout",
        last_error_at=clock.now - 60,
        last_success_at=clock.now,
        probe_durations_s=(0.01,) * 120,
        probes_total=500,
        skipped_total=1,
        hidden_queries=0,
    )


class BenchMonitor:
    """What the collector needs of a `PoolMonitor`: `view()` builds a fresh view, as the real one."""

    probe_enabled = True

    def __init__(self, tracker: PoolTracker, server: ServerHealthSnapshot) -> None:
        self._tracker = tracker
        self._server = server
        self._states = {b.pid: b.state for b in server.last_sample.backends}  # type: ignore[union-attr]
        self._stats = PoolStats("QueuePool", 500, 500, 1000, CHECKED_OUT, 400, 100, 30.0, 3600.0, True, False)  # fmt: skip
        self._app = AppInfo("postgresql://app:***@db/app", "DATABASE_URL", False, "require", 1)

    def view(self, *, detail: bool = True) -> MonitorView:
        pool = self._tracker.snapshot(self._states, detail=detail)
        return build_view(pool, self._stats, self._server, self._app)


class FixedView:
    probe_enabled = True

    def __init__(self, view: MonitorView) -> None:
        self._view = view

    def view(self, *, detail: bool = True) -> MonitorView:
        return self._view


def median_ms(work: Any, rounds: int) -> tuple[float, float]:
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return statistics.median(timings), timings[int(len(timings) * 0.95) - 1]


def main() -> None:
    # 600 suspected leaks are on purpose here; their warnings would drown the figures.
    logging.getLogger("monitor.leaks").setLevel(logging.ERROR)
    clock = FakeClock()
    tracker = build_tracker(clock)
    monitor = BenchMonitor(tracker, build_server(clock))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(lambda: cast(PoolMonitor, monitor)))

    view = monitor.view()
    body = generate_latest(registry)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    print(
        f"model: {len(view.pool.connections)} connections ({len(view.held)} checked out, "
        f"{len(view.pool.leaks)} leaks), {view.pool.counters.slow_queries} slow queries "
        f"({len(view.pool.slow_queries)} groups kept), {len(view.server.last_sample.backends)} "  # type: ignore[union-attr]
        f"backends; exposition {len(body):,} bytes, {series} series"
    )
    for _ in range(10):  # warm up
        generate_latest(registry)
    # The same families from one fixed view: what the collector and the text format cost alone.
    fixed = CollectorRegistry(auto_describe=False)
    fixed.register(MonitorCollector(lambda: cast(PoolMonitor, FixedView(view))))
    rows = [
        ("monitor.view() (dashboard)", median_ms(monitor.view, ROUNDS)),
        ("monitor.view(detail=False)", median_ms(lambda: monitor.view(detail=False), ROUNDS)),
        ("collector on a fixed view", median_ms(lambda: generate_latest(fixed), ROUNDS)),
        ("generate_latest(registry)", median_ms(lambda: generate_latest(registry), ROUNDS)),
    ]
    print(f"{'':28} {'median ms':>10} {'p95 ms':>8}")
    for name, (med, p95) in rows:
        print(f"{name:28} {med:10.2f} {p95:8.2f}")
    scrape_med = rows[-1][1][0]
    verdict = "ok" if scrape_med <= GOAL_MS else "MISSED"
    print(f"goal: median full scrape <= {GOAL_MS:.0f} ms: {verdict} ({ROUNDS} rounds)")


if __name__ == "__main__":
    main()
