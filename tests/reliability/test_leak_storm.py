"""A storm of leaks, slow statements and leak detections: memory and every record stay bounded."""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

import psutil
import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL

from monitor.settings import Settings
from tests.conftest import url_string
from tests.reliability.conftest import serve_app, unique_name, wait_for

GC_LEAKS = 3000
SLOW_SHAPES = 2000
LEAK_DETECTIONS = 300
WARMUP_FRACTION = 0.1
# Caps of the tracker's bounded collections (monitor/state/tracker.py defaults).
MAX_SLOW_GROUPS = 500
MAX_RECORDS = 200
# RSS growth allowed between the end of the warm-up and the end of the storm. Measured here:
# +2 to +3 MB (allocator arenas, SQLAlchemy's 500-entry statement cache and the 2048-entry
# sqltext caches filling with distinct text). Uncapped records (every reclaim, group and leak
# kept) measured +5 MB at this scale: the exact cap assertions below catch that, not RSS.
# The RSS bound catches what the caps cannot see: anything retained per event that owns a
# connection (libpq alone allocates 32 KB of buffers per connection: 3000 of them > 90 MB).
RSS_BOUND_MB = 10.0


def _leak_by_gc(engine: Engine, count: int) -> None:
    """Connections dropped without close(); the garbage collector returns them to the pool."""
    capacity = engine.pool.size() + engine.pool._max_overflow  # type: ignore[attr-defined]
    for n in range(count):
        conn = engine.connect()
        conn.execute(text("SELECT 1"))
        del conn  # a reference cycle with its transaction: only the collector frees it
        if n % (capacity // 2) == 0:
            gc.collect(1)  # young generations hold the fresh cycles: cheap and sufficient
    gc.collect()


def _slow_shapes(engine: Engine, start: int, stop: int) -> None:
    """Statements that differ in a column name: one slow-query group each."""
    with engine.connect() as conn:
        for n in range(start, stop):
            conn.execute(text(f"SELECT c_{n} FROM (SELECT 1 AS c_{n}) AS t"))


def _leak_detections(engine: Engine, monitor: Any, count: int, threshold_s: float) -> None:
    """Hold connections past the leak threshold until the sweep flags them, then return them."""
    target = _detected(monitor) + count
    deadline = time.monotonic() + 30
    while _detected(monitor) < target and time.monotonic() < deadline:
        held: list[Connection] = [engine.connect() for _ in range(engine.pool.size())]
        time.sleep(threshold_s * 2.5)
        for conn in held:
            conn.close()
    assert _detected(monitor) >= target, "the leak sweep did not flag the held connections"


def _detected(monitor: Any) -> int:
    return int(sum(monitor.view().pool.counters.leaks_by_class.values()))


def _rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_leak_storm_keeps_memory_and_records_bounded(
    schema_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    # Thousands of leak warnings would be kept by the log capture itself and inflate the RSS.
    caplog.set_level(logging.ERROR, logger="monitor.leaks")
    threshold_s = 0.1  # the smallest leak threshold the settings accept
    settings = Settings(
        database_url=url_string(schema_url),
        application_name=unique_name("pm-storm"),
        pool_size=6,
        max_overflow=4,
        pool_timeout_s=5.0,
        slow_query_s=0.000001,  # every statement is "slow": each distinct shape is a group
        leak_threshold_s=threshold_s,
        probe_interval_s=0.5,
    )
    warm_leaks, warm_shapes = int(GC_LEAKS * WARMUP_FRACTION), int(SLOW_SHAPES * WARMUP_FRACTION)
    warm_detections = int(LEAK_DETECTIONS * WARMUP_FRACTION)
    with serve_app(settings) as served:
        engine, monitor = served.engine, served.monitor
        # Warm-up: past the caps of nothing yet, but every code path and cache is exercised.
        _leak_by_gc(engine, warm_leaks)
        _slow_shapes(engine, 0, warm_shapes)
        _leak_detections(engine, monitor, warm_detections, threshold_s)
        rss_before = _rss_mb()
        started = time.monotonic()
        _leak_by_gc(engine, GC_LEAKS - warm_leaks)
        _slow_shapes(engine, warm_shapes, SLOW_SHAPES)
        _leak_detections(engine, monitor, LEAK_DETECTIONS - warm_detections, threshold_s)
        storm_s = time.monotonic() - started
        assert wait_for(lambda: monitor.view().pool.checked_out == 0, 30)
        rss_after = _rss_mb()
        view = monitor.view()
        snapshot = monitor.snapshot()

    counters = view.pool.counters
    growth = rss_after - rss_before
    print(
        f"\nleak storm ({storm_s:.1f} s): RSS {rss_before:.1f} -> {rss_after:.1f} MB "
        f"({growth:+.1f}); gc_reclaimed {counters.gc_reclaimed}, slow {counters.slow_queries}, "
        f"leaks {sum(counters.leaks_by_class.values())}; kept: slow groups "
        f"{len(view.pool.slow_queries)}, gc reclaims {len(view.pool.gc_reclaims)}, resolved "
        f"{len(view.pool.resolved_leaks)}"
    )
    # Totals count every event...
    assert counters.gc_reclaimed >= GC_LEAKS
    assert counters.slow_queries >= SLOW_SHAPES
    assert sum(counters.leaks_by_class.values()) >= LEAK_DETECTIONS
    assert counters.listener_errors == 0
    # ...while the kept records stay at their caps (and reach them: the caps are exercised).
    assert len(view.pool.slow_queries) == MAX_SLOW_GROUPS
    assert len(view.pool.gc_reclaims) == MAX_RECORDS
    assert len(view.pool.resolved_leaks) == MAX_RECORDS
    pool = snapshot["pool"]
    assert len(pool["slow_queries"]) <= MAX_SLOW_GROUPS
    assert len(pool["gc_reclaims"]) <= MAX_RECORDS
    assert len(pool["resolved_leaks"]) <= MAX_RECORDS
    assert growth < RSS_BOUND_MB, f"RSS grew {growth:.1f} MB during the storm"
