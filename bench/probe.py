"""What one probe of the server costs: its duration with many idle sessions on the server.

Starts a private embedded PostgreSQL with max_connections raised, opens N idle sessions, then
times `ServerProbe.run_once()` side by side with the idle server. Goal: median <= 10 ms with 300.
"""

from __future__ import annotations

import shutil
import statistics
import time
import uuid
from pathlib import Path

import psycopg2
from sqlalchemy import create_engine, text

from bench.interval import Verdict, judge
from monitor.embedded import EmbeddedPostgres
from monitor.probes.runner import ServerProbe
from monitor.state.server import ServerHealth

GOAL_MS = 10.0


def probe_times(probe: ServerProbe, health: ServerHealth, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        probe.run_once()
        times.append((time.perf_counter() - started) * 1000)
    assert health.snapshot().up, health.snapshot().last_error
    return times


def probe(sessions: int = 300, rounds: int = 60) -> list[Verdict]:
    """Probe durations on an idle server and with `sessions` idle sessions, side by side."""
    data_dir = Path("/tmp") / f"pm-bench-{uuid.uuid4().hex[:8]}"
    server = EmbeddedPostgres(data_dir)
    url = server.start()
    try:
        admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"ALTER SYSTEM SET max_connections = {sessions + 50}"))
        admin.dispose()
        server.stop()
        server.restart()

        health = ServerHealth()
        probe = ServerProbe(url, health, timeout_s=5.0)
        probe.run_once()  # connect and warm up
        quiet = probe_times(probe, health, rounds)

        dsn = url.render_as_string(hide_password=False).replace("postgresql+psycopg2", "postgresql")
        idle = [psycopg2.connect(dsn, application_name="bench-idle") for _ in range(sessions)]
        try:
            busy = probe_times(probe, health, rounds)
            sample = health.snapshot().last_sample
            assert sample is not None
            seen = len(sample.backends)
        finally:
            for session in idle:
                session.close()
        probe.close()
    finally:
        server.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    result = judge(f"probe, {sessions} idle sessions", [[t] for t in busy], GOAL_MS,
                   at_least=False, digits=2, unit=" ms")  # fmt: skip
    print(f"probe duration, {rounds} runs each (embedded PostgreSQL): idle server "
          f"{statistics.median(quiet):.2f} ms; with {sessions} idle sessions {result.figure} "
          f"(backends parsed: {seen}); ratio {statistics.median(busy) / statistics.median(quiet):.2f}x")  # fmt: skip
    return [result]
