"""Connection-health monitor for FastAPI + SQLAlchemy + PostgreSQL.

`from monitor import PoolMonitor` is the library entry point; importing the package starts
nothing (no engine, app or thread), and heavy modules load only when a name is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["PoolMonitor", "__version__", "create_app"]

if TYPE_CHECKING:
    from monitor.app import create_app
    from monitor.pool_monitor import PoolMonitor


def __getattr__(name: str) -> Any:
    if name == "PoolMonitor":
        from monitor.pool_monitor import PoolMonitor

        return PoolMonitor
    if name == "create_app":
        from monitor.app import create_app

        return create_app
    raise AttributeError(f"module 'monitor' has no attribute {name!r}")
