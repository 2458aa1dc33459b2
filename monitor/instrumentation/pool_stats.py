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


def queue_waiters(engine: Engine) -> int:
    """Callers blocked waiting for a connection right now, read from the pool's queue.

    QueuePool waits on a `threading.Condition` (its waiter locks are listed in `_waiters`);
    AsyncAdaptedQueuePool on an `asyncio.Queue` (futures in `_getters`, made on first use).
    Pools without a queue never make a caller wait. Private attributes: 0 if they change.
    """
    queue = getattr(engine.pool, "_pool", None)
    if queue is None:
        return 0
    try:
        condition = getattr(queue, "not_empty", None)
        if condition is not None:
            return len(condition._waiters)
        async_queue = vars(queue).get("_queue")  # memoized: absent until the first checkout
        if async_queue is None:
            return 0
        # list() copies in one step: the event loop may change the deque from another thread.
        return sum(1 for getter in list(async_queue._getters) if not getter.done())
    except Exception:
        return 0


def pool_checked_out(engine: Engine) -> int:
    """The pool's own count of checked-out connections (raises when the pool has none: the
    drift is then unknown, not 0)."""
    return int(engine.pool.checkedout())  # type: ignore[attr-defined]


def _call_int(pool: Any, name: str) -> int:
    method = getattr(pool, name, None)
    if not callable(method):
        return 0
    try:
        return int(method())
    except Exception:
        return 0
