"""Read the pool's own counters; QueuePool's overflow() is negative below pool_size, so clamp it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from monitor.state.records import PoolStats


def read_pool_stats(engine: Engine) -> PoolStats:
    pool: Any = engine.pool
    size = _call_int(pool, "size")
    checked_out = _call_int(pool, "checkedout")
    checked_in = _call_int(pool, "checkedin")
    overflow = max(0, _call_int(pool, "overflow"))
    max_overflow = int(getattr(pool, "_max_overflow", 0) or 0)
    timeout = getattr(pool, "_timeout", None)
    recycle = getattr(pool, "_recycle", -1)
    return PoolStats(
        pool_class=type(pool).__name__,
        size=size,
        max_overflow=max(0, max_overflow),
        max_connections=size + max(0, max_overflow),
        checked_out=checked_out,
        checked_in=checked_in,
        overflow=overflow,
        timeout_s=float(timeout) if isinstance(timeout, int | float) else None,
        recycle_s=float(recycle) if isinstance(recycle, int | float) and recycle > 0 else None,
        pre_ping=bool(getattr(pool, "_pre_ping", False)),
        echo=bool(engine.echo),
    )


def _call_int(pool: Any, name: str) -> int:
    method = getattr(pool, name, None)
    if not callable(method):
        return 0
    try:
        return int(method())
    except Exception:
        return 0
