"""Who watches a pool: a passive watcher (the pytest plugin's) steps aside for a monitor the app
attaches itself, follows that monitor's tracker, and returns when it detaches. Two monitors
wrapping one pool would each count every checkout; called only on attach and detach, and for
the monitor's own engines (`plumbing`), which no watcher watches."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Protocol

from monitor.instrumentation.pools_seen import ignore_pool

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from monitor.state.tracker import PoolTracker

log = logging.getLogger(__name__)


class PoolWatcher(Protocol):
    def before_attach(self, engine: Engine) -> None: ...

    def attached(self, engine: Engine, tracker: PoolTracker) -> None: ...

    def detached(self, engine: Engine, tracker: PoolTracker) -> None: ...

    def unwatch(self, engine: Engine) -> None: ...


_watchers: list[PoolWatcher] = []
_lock = threading.Lock()


def add_watcher(watcher: PoolWatcher) -> None:
    with _lock:
        _watchers.append(watcher)


def remove_watcher(watcher: PoolWatcher) -> None:
    with _lock:
        if watcher in _watchers:
            _watchers.remove(watcher)


def before_attach(engine: Engine) -> None:
    for watcher in _current():
        _call(watcher.before_attach, engine)


def attached(engine: Engine, tracker: PoolTracker) -> None:
    for watcher in _current():
        _call(watcher.attached, engine, tracker)


def detached(engine: Engine, tracker: PoolTracker) -> None:
    for watcher in _current():
        _call(watcher.detached, engine, tracker)


def plumbing(engine: Engine) -> None:
    """`engine` is the monitor's own (a server probe, the readiness check), not the app's: no
    pool count includes it and no watcher reports what it holds."""
    ignore_pool(engine.pool)
    for watcher in _current():
        _call(watcher.unwatch, engine)


def _current() -> list[PoolWatcher]:
    with _lock:
        return list(_watchers)


def _call(method: object, *args: object) -> None:
    try:
        method(*args)  # type: ignore[operator]
    except Exception:  # a watcher's failure must not stop the app's monitor from attaching
        log.warning("pool watcher failed", exc_info=True)
