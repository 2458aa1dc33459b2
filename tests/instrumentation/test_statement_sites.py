"""Slow statements and pool timeouts on a real pool carry the app line that caused them."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, exc, text

from monitor.pool_monitor import PoolMonitor


def test_a_slow_statement_names_the_line_that_ran_it(engine: Engine, monitor: PoolMonitor) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_sleep(0.25)"))  # the line the monitor must name
    (group,) = monitor.pool_snapshot().slow_queries
    assert group.last_site, "no site captured for the slow statement"
    assert group.last_site[0].filename == __file__
    assert "pg_sleep" in group.last_site[0].source


@pytest.mark.pool_monitor_allow(
    reason="holds the whole pool: the timeout under test", kinds="pool_timeout"
)
def test_a_pool_timeout_names_the_line_that_waited(engine: Engine, monitor: PoolMonitor) -> None:
    held = [engine.connect() for _ in range(4)]  # pool_size 3 + max_overflow 1
    try:
        with pytest.raises(exc.TimeoutError):
            engine.connect()  # waits pool_timeout (0.5 s) and gives up
    finally:
        for conn in held:
            conn.close()
    (record,) = monitor.pool_snapshot().timeouts
    assert record.site and record.site[0].filename == __file__
    assert "engine.connect()" in record.site[0].source
    assert record.waiter is not None and record.waiter.kind == "task"
    assert len(record.holders) == 4
