"""What one probe of the server costs: with many idle sessions, and through PgBouncer.

Default: a private embedded PostgreSQL with max_connections raised and N idle sessions;
`ServerProbe.run_once()` is timed side by side with the idle server. Goal: median <= 10 ms
with 300. `--through pgbouncer`: behind PgBouncer the probe connects per probe (to hold no pool
slot for good); timed side by side with a probe on a kept direct connection. Goal: median
<= 50 ms (1% of the default 5 s probe interval).
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
import uuid
from pathlib import Path

import psycopg2
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

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


# --- through PgBouncer: the probe connects per probe, to hold no pool slot --------------------

BOUNCER_GOAL_MS = 50.0  # 1% of the default 5 s probe interval, on the probe's own thread
BOUNCER_PAUSE_S = 0.2  # probes run seconds apart: PgBouncer finishes resetting the server


def _probe_ms(url: URL, rounds: int) -> tuple[list[float], bool]:
    """run_once durations in ms after a warm-up, and whether the probe saw a pooler."""
    health = ServerHealth()
    probe = ServerProbe(url, health, timeout_s=5.0)
    try:
        probe.run_once()
        times = []
        for _ in range(rounds):
            time.sleep(BOUNCER_PAUSE_S)
            started = time.perf_counter()
            probe.run_once()
            times.append((time.perf_counter() - started) * 1000)
        snapshot = health.snapshot()
        assert snapshot.up and snapshot.last_sample is not None, snapshot.last_error
        return times, snapshot.last_sample.via_pooler
    finally:
        probe.close()


def _connect_ms(url: URL, rounds: int) -> float:
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        psycopg2.connect(dsn).close()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def through_pgbouncer(rounds: int = 60) -> list[Verdict]:
    """A probe on a kept connection (direct) beside one that connects per probe through
    PgBouncer in session mode, and a bare connect + close on each path (DATABASE_URL, else an
    embedded PostgreSQL)."""
    from tests.pgbouncer import PgBouncer  # the tests' PgBouncer runner: config, free port

    raw = os.environ.get("DATABASE_URL")
    server = None
    if raw:
        url = make_url(raw).set(drivername="postgresql+psycopg2")
    else:
        server = EmbeddedPostgres(Path("/tmp") / f"pm-bench-{uuid.uuid4().hex[:8]}")
        url = server.start()
    executable = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    bouncer = PgBouncer(url, pool_mode="session", default_pool_size=5, executable=executable)
    try:
        kept, kept_pooler = _probe_ms(url, rounds)
        per_probe, per_probe_pooler = _probe_ms(bouncer.url(), rounds)
        direct_connect = _connect_ms(url, rounds)
        bouncer_connect = _connect_ms(bouncer.url(), rounds)
    finally:
        bouncer.close()
        if server is not None:
            server.close()
            shutil.rmtree(server.data_dir, ignore_errors=True)
    result = judge("probe through PgBouncer", [[t] for t in per_probe], BOUNCER_GOAL_MS,
                   at_least=False, digits=2, unit=" ms")  # fmt: skip
    print(f"{rounds} probes, {BOUNCER_PAUSE_S:g} s apart: kept connection, direct "
          f"{statistics.median(kept):.2f} ms (pooler seen: {kept_pooler}); connect per probe "
          f"through PgBouncer {result.figure} (pooler seen: {per_probe_pooler}); ratio "
          f"{statistics.median(per_probe) / statistics.median(kept):.2f}x; bare connect+close "
          f"direct {direct_connect:.2f} ms, through PgBouncer {bouncer_connect:.2f} ms")  # fmt: skip
    return [result]
