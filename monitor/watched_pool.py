"""One engine's pool under watch: its tracker, its listeners and the server it talks to.

`PoolMonitor` holds one per engine (primary, replicas, sync and async mixed) and shows them all
on one dashboard, one `/metrics` and one snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from monitor.instrumentation.pool_listeners import PoolListeners
from monitor.instrumentation.pool_stats import read_pool_stats
from monitor.instrumentation.statements import StatementListeners
from monitor.state.records import PoolStats
from monitor.state.server import ServerHealth, ServerHealthSnapshot
from monitor.state.tracker import PoolTracker
from monitor.state.verdicts import VerdictWindow
from monitor.urls import sync_psycopg2_url

if TYPE_CHECKING:
    from monitor.process_group import GroupMember

PRIMARY = "primary"


@dataclass(eq=False)
class WatchedPool:
    """The monitor's parts for one engine; `server_health` is shared by the pools of one URL."""

    name: str
    role: str
    engine: Engine
    is_async: bool
    tracker: PoolTracker
    probe_url: URL
    url_source: str
    server_health: ServerHealth
    pool_listeners: PoolListeners
    statement_listeners: StatementListeners
    verdicts: VerdictWindow
    attached: bool = field(default=True)
    # This worker's place in the process group, while started as one worker of several.
    group: GroupMember | None = None

    def pool_stats(self) -> PoolStats:
        return read_pool_stats(self.engine, self.tracker.counts)

    def server_states(self) -> dict[int, str | None] | None:
        """pid -> pg_stat_activity.state from the last successful probe (None when stale)."""
        return server_states(self.server_health.snapshot())

    def detach(self) -> None:
        if self.attached:
            self.pool_listeners.detach()
            self.statement_listeners.detach()
            self.attached = False


def probe_key(url: URL) -> str:
    """Pools whose probe URL is the same share one server probe. The probe always connects
    through psycopg2, so the app's driver (asyncpg, psycopg) makes no difference; the login does."""
    return sync_psycopg2_url(url).render_as_string(hide_password=False)


def default_pool_name(engine: Engine, role: str, taken: set[str]) -> str:
    """The engine's `pool_logging_name`, else the database name (and the role unless primary);
    made unique among `taken` with a counter."""
    base = engine.pool.logging_name or engine.url.database or "default"
    if not engine.pool.logging_name and role != PRIMARY:
        base = f"{base}-{role}"
    return unique_name(base, taken)


def unique_name(base: str, taken: set[str]) -> str:
    name, counter = base, 2
    while name in taken:
        name = f"{base}-{counter}"
        counter += 1
    return name


def server_states(health: ServerHealthSnapshot) -> dict[int, str | None] | None:
    if not health.up or health.last_sample is None:
        return None
    return {backend.pid: backend.state for backend in health.last_sample.backends}
