"""Cost of the monitor on the checkout path, measured side by side against a bare engine.

Alternates rounds of a bare engine and an instrumented one (leak-site capture on) in the same
process and prints the median ratio of per-cycle time for:
  (a) a checkout + checkin cycle (`engine.connect()` / `close()`, what every Session does),
  (a') the same cycle at the pool level (`engine.pool.connect()` / `close()`), for scale,
  (b) checkout + `SELECT 1` + checkin.
Goals: (a) <= 1.30, (b) <= 1.05. Run: `.venv/bin/python bench/checkout.py` (DATABASE_URL or local PG).

Both engines hand out one shared DBAPI connection (never used by both at once): with a server
backend each, (b) measured the backends' CPU placement (+-15% between two bare engines here).
(b) is dominated by two server round trips whose latency drifts within a second, so it
alternates many short blocks instead of a few long ones.
Env: BENCH_ROUNDS (rounds of (a), default 21; (b) runs 15 times as many short ones),
BENCH_CAPTURE=0 to measure without leak-site capture.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import Engine, create_engine, make_url, text

from monitor.pool_monitor import PoolMonitor

URL = os.environ.get("DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test").replace(
    "postgresql://", "postgresql+psycopg2://", 1
)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "21"))


def engine_cycle(engine: Engine) -> None:
    engine.connect().close()


def pool_cycle(engine: Engine) -> None:
    engine.pool.connect().close()


def select_cycle(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def per_call_us(work: Callable[[Engine], None], engine: Engine, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        work(engine)
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    dialect = create_engine(URL).dialect
    connect_args, connect_kwargs = dialect.create_connect_args(make_url(URL))
    shared = dialect.connect(*connect_args, **connect_kwargs)
    bare = create_engine(URL, pool_size=1, max_overflow=0, creator=lambda: shared)
    watched = create_engine(URL, pool_size=1, max_overflow=0, creator=lambda: shared)
    # A second bare engine: (b) against it is the noise floor of the run.
    control = create_engine(URL, pool_size=1, max_overflow=0, creator=lambda: shared)
    monitor = PoolMonitor(
        watched, probe=False, capture_sites=os.environ.get("BENCH_CAPTURE", "1") == "1"
    )
    # (name, work, measured engine, calls per block, rounds, goal): each round times one block
    # on the bare engine and one on the measured engine, in alternating order
    cases = [
        ("(a)  engine checkout+checkin", engine_cycle, watched, 4_000, ROUNDS, 1.30),
        ("(a') pool checkout+checkin", pool_cycle, watched, 4_000, ROUNDS, None),
        ("(b)  checkout+SELECT 1+checkin", select_cycle, watched, 50, ROUNDS * 15, 1.05),
        ("(b0) same, bare vs bare (noise)", select_cycle, control, 50, ROUNDS * 15, None),
    ]
    # ratio: median of the per-round ratios; IQR: their interquartile range (the machine's noise)
    print(f"{'case':34} {'bare us':>9} {'monitored us':>13} {'ratio':>7}  {'IQR':9}  goal")
    for name, work, measured, block, rounds, goal in cases:
        for engine in (bare, measured):  # warm up both pools
            per_call_us(work, engine, max(block, 500))
        ratios, bare_times, watched_times = [], [], []
        for round_index in range(rounds):
            order = (bare, measured) if round_index % 2 == 0 else (measured, bare)
            times = {id(engine): per_call_us(work, engine, block) for engine in order}
            bare_times.append(times[id(bare)])
            watched_times.append(times[id(measured)])
            ratios.append(times[id(measured)] / times[id(bare)])
        ratio = statistics.median(ratios)
        low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratio] * 3
        verdict = "" if goal is None else (f"<= {goal:.2f} {'ok' if ratio <= goal else 'MISSED'}")
        print(
            f"{name:34} {statistics.median(bare_times):9.2f} "
            f"{statistics.median(watched_times):13.2f} {ratio:7.3f}  {low:.2f}-{high:.2f}  {verdict}"
        )
    snapshot = monitor.pool_snapshot()
    print(
        f"checkouts tracked: {snapshot.counters.checkouts}, listener errors: {snapshot.counters.listener_errors}"
    )
    monitor.detach()
    bare.dispose()
    watched.dispose()
    control.dispose()
    shared.close()


if __name__ == "__main__":
    main()
