"""What connecting per probe costs (the probe does so behind PgBouncer, to hold no pool slot).

Times `ServerProbe.run_once()` on a kept connection (direct to PostgreSQL) against one that
connects per probe (through PgBouncer in session mode), and a bare connect + close on each path.
Run: `.venv/bin/python bench/probe_connect.py` (DATABASE_URL, else an embedded PostgreSQL).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg2
from sqlalchemy.engine import URL, make_url

from monitor.embedded import EmbeddedPostgres
from monitor.probes.runner import ServerProbe
from monitor.state.server import ServerHealth
from tests.pgbouncer import PgBouncer

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "60"))
# Probes run seconds apart: a pause lets PgBouncer finish resetting the server it got back.
PAUSE_S = float(os.environ.get("BENCH_PAUSE_S", "0.2"))


def probe_ms(url: URL) -> tuple[float, bool]:
    """Median run_once in ms after a warm-up, and whether the probe saw a pooler."""
    health = ServerHealth()
    probe = ServerProbe(url, health, timeout_s=5.0)
    try:
        probe.run_once()
        times = []
        for _ in range(ROUNDS):
            time.sleep(PAUSE_S)
            started = time.perf_counter()
            probe.run_once()
            times.append((time.perf_counter() - started) * 1000)
        snapshot = health.snapshot()
        assert snapshot.up and snapshot.last_sample is not None, snapshot.last_error
        return statistics.median(times), snapshot.last_sample.via_pooler
    finally:
        probe.close()


def connect_ms(url: URL) -> float:
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        psycopg2.connect(dsn).close()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
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
        kept, kept_pooler = probe_ms(url)
        per_probe, per_probe_pooler = probe_ms(bouncer.url())
        direct_connect = connect_ms(url)
        bouncer_connect = connect_ms(bouncer.url())
    finally:
        bouncer.close()
        if server is not None:
            server.close()
            shutil.rmtree(server.data_dir, ignore_errors=True)
    print(f"rounds {ROUNDS}, {PAUSE_S:g} s apart, medians:")
    print(f"  probe, kept connection, direct       {kept:7.2f} ms (pooler seen: {kept_pooler})")
    print(
        f"  probe, connect per probe, PgBouncer  {per_probe:7.2f} ms (pooler seen: {per_probe_pooler})"
    )
    print(f"  bare connect+close, direct           {direct_connect:7.2f} ms")
    print(f"  bare connect+close, PgBouncer        {bouncer_connect:7.2f} ms")


if __name__ == "__main__":
    main()
