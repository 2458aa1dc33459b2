"""What each reader of the monitor takes: small protocols over its snapshots and pools.

Metrics, web and background work type against these, never against `PoolMonitor`, which
satisfies them all structurally, so neither side imports the other. Types only: nothing of the
monitor is imported at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from monitor.process_group import GroupMember
    from monitor.state.pgbouncer import PgBouncerHealth
    from monitor.state.view import MonitorView
    from monitor.watched_pool import WatchedPool


class ViewSource(Protocol):
    """Every watched pool's view, the primary first (the OpenTelemetry instruments)."""

    def views(self, *, detail: bool = ...) -> Sequence[MonitorView]: ...


class MetricsSource(ViewSource, Protocol):
    """The views and whether a server probe runs (the Prometheus collector)."""

    @property
    def probe_enabled(self) -> bool: ...


class NamedPool(Protocol):
    """A watched pool as the dashboard's pool switcher lists it."""

    @property
    def name(self) -> str: ...


class DashboardSource(Protocol):
    """What `/monitor` reads: one pool's view, the JSON snapshot, the pools' names, the token."""

    @property
    def dashboard_token(self) -> str | None: ...

    @property
    def pools(self) -> Sequence[NamedPool]: ...

    def view(self, *, pool: str | None = ...) -> MonitorView: ...

    def snapshot(self) -> dict[str, Any]: ...


class MonitorSurface(DashboardSource, MetricsSource, Protocol):
    """What an app serves on `/monitor` and `/metrics` (`app.state.pool_monitor`)."""


class PoolSource(Protocol):
    """The watched pools and what background work needs to probe, sweep and publish them."""

    @property
    def pools(self) -> Sequence[WatchedPool]: ...

    @property
    def group(self) -> GroupMember | None: ...

    @property
    def leak_threshold_s(self) -> float: ...

    @property
    def probe_enabled(self) -> bool: ...

    @property
    def probe_interval_s(self) -> float: ...

    @property
    def probe_timeout_s(self) -> float: ...

    @property
    def pgbouncer_url(self) -> URL | None: ...

    @property
    def pgbouncer_health(self) -> PgBouncerHealth | None: ...

    def pool_server_states(self, watched: WatchedPool) -> dict[int, str | None] | None:
        """pid -> server state for one pool's connections (what its leak sweep classifies by)."""
        ...

    def publish(self) -> None:
        """Write this worker's report of every pool for the rest of the group."""
        ...
