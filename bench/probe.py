"""Probe duration with many idle sessions on the server (goal: <= 10 ms median with 300).

Starts a private embedded PostgreSQL with max_connections raised, opens N idle sessions, then
times `ServerProbe.run_once()` side by side with an idle server (no extra sessions).
Run: `.venv/bin/python bench/probe.py` (N from BENCH_SESSIONS, default 300).
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
from sqlalchemy import create_engine, text

from monitor.embedded import EmbeddedPostgres
from monitor.probes.runner import ServerProbe
from monitor.state.server import ServerHealth

SESSIONS = int(os.environ.get("BENCH_SESSIONS", "300"))
ROUNDS = 60


def probe_times(probe: ServerProbe, health: ServerHealth, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        probe.run_once()
        times.append((time.perf_counter() - started) * 1000)
    assert health.snapshot().up, health.snapshot().last_error
    return times


def main() -> None:
    data_dir = Path("/tmp") / f"pm-bench-{uuid.uuid4().hex[:8]}"
    server = EmbeddedPostgres(data_dir)
    url = server.start()
    try:
        admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"ALTER SYSTEM SET max_connections = {SESSIONS + 50}"))
        admin.dispose()
        server.stop()
        server.restart()

        health = ServerHealth()
        probe = ServerProbe(url, health, timeout_s=5.0)
        probe.run_once()  # connect and warm up
        quiet = probe_times(probe, health, ROUNDS)

        dsn = url.render_as_string(hide_password=False).replace("postgresql+psycopg2", "postgresql")
        sessions = [psycopg2.connect(dsn, application_name="bench-idle") for _ in range(SESSIONS)]
        try:
            busy = probe_times(probe, health, ROUNDS)
            sample = health.snapshot().last_sample
            assert sample is not None
            seen = len(sample.backends)
        finally:
            for session in sessions:
                session.close()
        probe.close()
        print(f"probe duration, median of {ROUNDS} runs (embedded PostgreSQL 18):")
        print(f"  idle server:              {statistics.median(quiet):6.2f} ms")
        print(f"  with {SESSIONS} idle sessions:  {statistics.median(busy):6.2f} ms  "
              f"(backends parsed: {seen}; goal <= 10 ms: {'ok' if statistics.median(busy) <= 10 else 'MISSED'})")  # fmt: skip
        print(f"  ratio: {statistics.median(busy) / statistics.median(quiet):.2f}x")
    finally:
        server.close()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
