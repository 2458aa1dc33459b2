"""How many connection pools this process has opened (the guide: one engine per app).

A class-level `first_connect` listener fires once per pool, so it costs nothing per checkout.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.pool import Pool

_pools: weakref.WeakSet[Any] = weakref.WeakSet()
_ignored: weakref.WeakSet[Any] = weakref.WeakSet()  # the monitor's own probe and readiness pools
_lock = threading.Lock()
_installed = False


def _on_first_connect(dbapi_connection: Any, record: Any) -> None:
    try:
        pool = getattr(record, "_ConnectionRecord__pool", None)
        if pool is not None:
            with _lock:  # a WeakSet changing while a reader lists it raises in the reader
                _pools.add(pool)
    except Exception:
        pass


def watch_pools(current: Pool) -> None:
    """Start counting pools (idempotent); `current` is counted even if it connected already."""
    global _installed
    with _lock:
        if not _installed:
            event.listen(Pool, "first_connect", _on_first_connect)
            _installed = True
        _pools.add(current)


@contextmanager
def uncounted(pool: Pool) -> Iterator[None]:
    """Attach a monitor that is not the app's (the pytest plugin's watch): pools count as they
    would without it (`pool` from its first connection on, any pool only once the app's own
    monitor started the count)."""
    global _installed
    with _lock:
        counted = pool in _pools
        installed = _installed
    try:
        yield
    finally:
        with _lock:
            if not counted:
                _pools.discard(pool)
            if not installed and _installed:
                event.remove(Pool, "first_connect", _on_first_connect)
                _installed = False


def ignore_pool(pool: Pool) -> None:
    """Leave out a pool that belongs to the monitor or the app's plumbing, not to the app."""
    with _lock:
        _ignored.add(pool)


def pools_observed() -> int:
    """Live pools seen by the monitor or connected at least once (disposed ones drop out)."""
    with _lock:
        return sum(1 for pool in list(_pools) if pool not in _ignored)
