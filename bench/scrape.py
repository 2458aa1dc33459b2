"""What reading the monitor costs: a `/metrics` scrape of a large model, and a dashboard poll.

scrape: `PoolTracker` driven through its public methods with fake slots and a fake clock (1,000
tracked connections, 600 of them leaked, 10,000 slow statements) joined with a literal server
sample of 1,000 backends; `generate_latest` is timed, the view taken inside. Goal: median
<= 20 ms. No database needed.
poll: the served demo app's CPU per dashboard poll, from /proc. Goal: an open dashboard takes
<= 1% of a core. `--sessions N`: the same goal with N idle server sessions listed (capped).
"""

from __future__ import annotations

import logging
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from bench.interval import Verdict, judge
from bench.served import READ, cpu_seconds, crud_cases, served
from monitor.app import create_app
from monitor.background import PUBLISH_CPU_SHARE
from monitor.embedded import EmbeddedPostgres
from monitor.metrics.collector import MonitorCollector
from monitor.pool_monitor import PoolMonitor
from monitor.process_group import PUBLISH_INTERVAL_S, STALE_AFTER_S, GroupMember
from monitor.selftest import DEMO_HEADERS
from monitor.settings import Settings
from monitor.state.holders import RequestScope
from monitor.state.records import PoolStats
from monitor.state.server import (
    ACTIVITY_STATES,
    Backend,
    ServerHealth,
    ServerHealthSnapshot,
    ServerSample,
    ServerSettings,
)
from monitor.state.tracker import PoolTracker
from monitor.state.view import AppInfo, MonitorView, build_view
from monitor.web.views import PANEL_NAMES

CONNECTIONS = 1_000
CHECKED_OUT = 600
SLOW_QUERIES = 10_000
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
    """What the collector needs (`monitor.sources.MetricsSource`): a fresh view per call, as the
    real monitor builds."""

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

    def views(self, *, detail: bool = True) -> tuple[MonitorView, ...]:
        return (self.view(detail=detail),)


class FixedView:
    probe_enabled = True

    def __init__(self, view: MonitorView) -> None:
        self._view = view

    def views(self, *, detail: bool = True) -> tuple[MonitorView, ...]:
        return (self._view,)


def timings_ms(work: Any, rounds: int) -> list[float]:
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def scrape(rounds: int = 200) -> list[Verdict]:
    """A full `/metrics` body on the large model (goal: median <= 20 ms), and its parts."""
    # 600 suspected leaks are on purpose here; their warnings would drown the figures.
    logging.getLogger("monitor.leaks").setLevel(logging.ERROR)
    clock = FakeClock()
    tracker = build_tracker(clock)
    monitor = BenchMonitor(tracker, build_server(clock))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(lambda: monitor))

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
    fixed.register(MonitorCollector(lambda: FixedView(view)))
    rows = {
        "monitor.view() (dashboard)": timings_ms(monitor.view, rounds),
        "monitor.view(detail=False)": timings_ms(lambda: monitor.view(detail=False), rounds),
        "collector on a fixed view": timings_ms(lambda: generate_latest(fixed), rounds),
        "generate_latest(registry)": timings_ms(lambda: generate_latest(registry), rounds),
    }
    print(f"{'':28} {'median ms':>10} {'p95 ms':>8}")
    for name, timings in rows.items():
        p95 = sorted(timings)[max(0, int(len(timings) * 0.95) - 1)]
        print(f"{name:28} {statistics.median(timings):10.2f} {p95:8.2f}")
    full = rows["generate_latest(registry)"]
    return [judge("scrape", [[t] for t in full], GOAL_MS, at_least=False, digits=2, unit=" ms")]


# --- poll: what an open dashboard costs the app it watches ----------------------------------

POLL_INTERVAL_S = 2.0  # the dashboard's hx-trigger
POLL_GOAL_PERCENT = 1.0  # of a core, one combined poll every POLL_INTERVAL_S


def cpu_ms_per_call(pid: int, call: Callable[[], None], calls: int) -> float:
    """The app's CPU milliseconds per `call()`, over `calls` calls in a row."""
    before = cpu_seconds(pid)
    for _ in range(calls):
        call()
    return (cpu_seconds(pid) - before) * 1000 / calls


def _get(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    if response.status_code != 200:
        raise SystemExit(f"GET {path} answered {response.status_code}: {response.text[:300]}")


def _get_each_panel(client: httpx.Client) -> None:
    for name in PANEL_NAMES:
        _get(client, f"/monitor/partials/{name}")


def poll(rounds: int = 5, polls: int = 40) -> list[Verdict]:
    """The served app's CPU per dashboard poll (`/monitor/partials`, every panel in one answer)
    with rows in the held, leaks and slow-query panels; beside it, one request per panel (how
    it polled before) and a CRUD read, in alternating rounds. Goal: <= 1% of a core."""
    demo = {"MONITOR_DEMO_ROUTES": "true", "MONITOR_DEMO_HOLD_TTL_S": "600",
            "MONITOR_LEAK_THRESHOLD_S": "1"}  # fmt: skip
    with (
        served(True, launcher=[], extra_env=demo) as (base, pid),
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        read_path = crud_cases(base)[READ]
        for path in ("/demo/leak?count=2&hold_s=600", "/demo/slow-query"):
            response = client.post(path, headers=DEMO_HEADERS)
            if response.status_code != 200:
                raise SystemExit(f"POST {path} answered {response.status_code}")
        ways: dict[str, Callable[[], None]] = {
            "combined": lambda: _get(client, "/monitor/partials"),
            "per panel": lambda: _get_each_panel(client),
            "CRUD read": lambda: _get(client, read_path),
        }
        for call in ways.values():  # warm-up: imports, template compilation, the first probe
            call()
        time.sleep(2.0)  # the leak sweep has flagged the held connections
        if "POST /demo/leak" not in client.get("/monitor/partials").text:
            raise SystemExit("the dashboard does not show the demo's leaked connections")
        per_way: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(rounds):
            for name, call in ways.items():
                per_way[name].append(cpu_ms_per_call(pid, call, polls))
    medians = {name: statistics.median(values) for name, values in per_way.items()}
    print(f"app CPU per call, median of {rounds} rounds x {polls} calls ({len(PANEL_NAMES)} panels): "
          + ", ".join(f"{name} {ms:.2f} ms" for name, ms in medians.items()))  # fmt: skip
    print(f"per panel / combined: {medians['per panel'] / medians['combined']:.1f}x; a combined "
          f"poll costs {medians['combined'] / medians['CRUD read']:.1f} CRUD reads")  # fmt: skip
    share = [[ms / (POLL_INTERVAL_S * 1000) * 100] for ms in per_way["combined"]]
    return [judge("poll", share, POLL_GOAL_PERCENT, at_least=False, digits=2, unit="% of a core")]


def poll_with_sessions(sessions: int = 400, polls: int = 20) -> list[Verdict]:
    """The combined poll and the JSON snapshot with `sessions` idle server sessions under the
    app's application_name (each a row of the server sample; the lists are capped at 50), on a
    private embedded PostgreSQL; client and app in this process (CPU of both)."""
    data_dir = Path(tempfile.mkdtemp(prefix="pm-bench-", dir="/tmp"))
    server = EmbeddedPostgres(data_dir)
    url = server.start()
    try:
        admin = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"ALTER SYSTEM SET max_connections = {sessions + 50}"))
        admin.dispose()
        server.stop("fast")
        server.restart()
        settings = Settings(database_url=url.render_as_string(hide_password=False))
        sessions_engine = create_engine(
            url, poolclass=NullPool, connect_args={"application_name": settings.application_name}
        )
        held = [sessions_engine.connect() for _ in range(sessions)]
        try:
            with TestClient(create_app(settings)) as client:
                deadline = time.monotonic() + 60
                lists: Any = {}
                while time.monotonic() < deadline:
                    lists = client.get("/monitor/api/snapshot").json().get("session_lists", {})
                    if lists.get("server_sessions", {}).get("total", 0) >= sessions:
                        break
                    time.sleep(0.5)
                else:
                    raise SystemExit(f"the probe never saw the {sessions} sessions: {lists}")
                snapshot = client.get("/monitor/api/snapshot")
                sizes, cpu_ms = [], []
                for _ in range(polls):
                    started = time.process_time()
                    sizes.append(len(client.get("/monitor/partials").content))
                    cpu_ms.append((time.process_time() - started) * 1000)
        finally:
            for conn in held:
                conn.close()
            sessions_engine.dispose()
    finally:
        server.close()  # stops the server: this process started it
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"{sessions} sessions: snapshot {len(snapshot.content) / 1024:.1f} KiB, poll "
          f"{max(sizes) / 1024:.1f} KiB, {statistics.median(cpu_ms):.1f} ms CPU per poll; "
          f"lists: {lists}")  # fmt: skip
    share = [[ms / (POLL_INTERVAL_S * 1000) * 100] for ms in cpu_ms]
    name = f"poll, {sessions} server sessions"
    return [judge(name, share, POLL_GOAL_PERCENT, at_least=False, digits=2, unit="% of a core")]


# ---- several workers as one monitor -----------------------------------------------------

WORKERS = 8
CONNECTIONS = 200
SLOW_SHAPES = 50
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
    primary = monitor.pools[0]
    primary.group = GroupMember(directory, "app")
    settings = ServerSettings("15.6", 150006, 2_000, 3, 0, None, None, None, None)
    primary.server_health = ServerHealth()
    primary.server_health.record_success(ServerSample(time.time(), 0.01, "app", (), 1, settings))
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


def workers(rounds: int = 100) -> list[Verdict]:
    """Several workers as one monitor: a /metrics scrape over 8 workers x 200 connections
    (median <= 30 ms) and what publishing costs each worker (<= 1% of a core)."""
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
                ("generate_latest(registry)", timed(lambda: generate_latest(registry), rounds)),
                ("GET /metrics (ASGI)", timed(lambda: client.get("/metrics"), rounds)),
                ("monitor.view() (dashboard)", timed(monitor.view, rounds)),
                (f"publish, {CONNECTIONS} connections", timed(monitor.publish, rounds)),
            ]
            monitor.stop()
        small = answering_monitor(directory / "small", 10)
        rows.append(("publish, 10 connections", timed(small.publish, rounds)))
    print(f"{'':30} {'median ms':>10} {'p95 ms':>8} {'CPU ms':>8}")
    for name, (med, p95, cpu) in rows:
        print(f"{name:30} {med:10.2f} {p95:8.2f} {cpu:8.2f}")
    scrape_ms = rows[1][1][0]
    verdicts = [
        Verdict(
            "workers /metrics (8 x 200 connections)",
            f"{scrape_ms:.1f} ms",
            f"<= {SCRAPE_GOAL_MS:.0f} ms",
            "met" if scrape_ms <= SCRAPE_GOAL_MS else "missed",
        )
    ]
    for name, (_med, _p95, cpu) in rows[3:]:
        # The publisher waits cost / PUBLISH_CPU_SHARE after each publish, at least a second.
        every_s = max(PUBLISH_INTERVAL_S, min(cpu / 1000 / PUBLISH_CPU_SHARE, STALE_AFTER_S / 3))
        share = cpu / 1000 / math.ceil(every_s)  # the scheduler ticks each whole second
        verdicts.append(
            Verdict(
                f"workers {name}",
                f"{share:.2%} of a core (every {math.ceil(every_s)} s)",
                "<= 1% of a core",
                "met" if share <= PUBLISH_GOAL_SHARE else "missed",
            )
        )
    return verdicts
