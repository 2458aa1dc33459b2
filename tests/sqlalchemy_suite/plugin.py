"""pytest plugin for SQLAlchemy's own test suite: a `PoolMonitor` on every engine it creates.

Loaded with `-p tests.sqlalchemy_suite.plugin` (repository root on PYTHONPATH) from an unpacked
SQLAlchemy source tree. Engines get a monitor through an engine-creation plugin that every
`create_engine` / `create_async_engine` loads; a pool the suite builds and connects without an
engine gets one through a plain `Engine` around it. The summary says how many were attached and
whether any monitor listener failed (failures are swallowed in the app, so they are counted here).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

import pytest

_lock = threading.Lock()
_counts = {"engines": 0, "pools without an engine": 0}
_listener_failures: list[str] = []
_pools_handled: weakref.WeakSet[Any] = weakref.WeakSet()


class _FailureLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _listener_failures.append(record.getMessage())


def _attach(engine: Any) -> None:
    from monitor.pool_monitor import PoolMonitor

    # Nothing keeps the monitor object: its hooks live on the engine's pool and dialect, as in
    # an app that drops its reference; holding it here would keep every engine alive.
    PoolMonitor(engine, probe=False)


def _install() -> None:
    from sqlalchemy.engine import URL, CreateEnginePlugin, Engine, make_url
    from sqlalchemy.engine.default import DefaultDialect
    from sqlalchemy.pool import Pool

    class AttachMonitor(CreateEnginePlugin):
        def engine_created(self, engine: Engine) -> None:
            with _lock:
                _counts["engines"] += 1
                _pools_handled.add(engine.pool)
            _attach(engine)

    instantiate_plugins = URL._instantiate_plugins

    def _instantiate_plugins(self: URL, kwargs: Any) -> Any:
        url, plugins, remaining = instantiate_plugins(self, kwargs)
        return url, [*plugins, AttachMonitor(url, remaining)], remaining

    URL._instantiate_plugins = _instantiate_plugins  # type: ignore[method-assign]

    pool_connect = Pool.connect

    def connect(self: Pool) -> Any:
        # A pool neither made by create_engine nor already wrapped (the monitor wraps the pools
        # its engine's dispose() makes): give it a monitor of its own before its first checkout.
        if "_do_get" not in self.__dict__ and self not in _pools_handled:
            with _lock:
                fresh = self not in _pools_handled
                _pools_handled.add(self)
                if fresh:
                    _counts["pools without an engine"] += 1
            if fresh:
                _attach(Engine(self, DefaultDialect(), make_url("sqlite://")))
        return pool_connect(self)

    Pool.connect = connect  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    # After SQLAlchemy's own bootstrap (its conftest): the monitor imports SQLAlchemy.
    logging.getLogger("monitor.instrumentation").addHandler(_FailureLog(logging.ERROR))
    _install()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    counts = ", ".join(f"{name}: {count}" for name, count in _counts.items())
    terminalreporter.write_line(f"pool-monitor attached to {counts}")
    terminalreporter.write_line(f"pool-monitor listener failures: {len(_listener_failures)}")
    for message in sorted(set(_listener_failures)):
        terminalreporter.write_line(f"  {message}")
