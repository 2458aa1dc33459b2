"""Plain-data records the tracker hands to readers; JSON-serialisable through `to_dict`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from monitor.state.histogram import HistogramSnapshot
from monitor.state.holders import Holder
from monitor.state.sites import Frame


class LeakClass(StrEnum):
    """Why a connection is a suspected leak: its owner ended while it was still checked out, or
    (owner alive) what the server sees it do once it sat unused past the threshold."""

    OUTLIVED_OWNER = "outlived_owner"  # its request, task or thread ended before it came back
    IDLE_IN_TRANSACTION = "idle_in_transaction"  # forgotten session: holds locks, pins xmin
    IDLE = "idle"  # held with no work (across an await, an HTTP call, a forgotten close)
    ACTIVE = "active"  # a long query: slow rather than leaked
    UNKNOWN = "unknown"  # no server data for it (yet)
    # Behind a pooler that hands server sessions out per transaction (or of unknown mode):
    # no server session belongs to it, so its server state cannot be known.
    NO_SERVER_VIEW = "no_server_view"


# The server state reported for a pooled connection that has no server session of its own.
NO_SERVER_SESSION = "<no server session of its own>"


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    at: float  # wall clock
    kind: str  # connect, checkout, checkin, reset, invalidate, soft_invalidate, close, detach
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ConnectionView:
    """One connection of the pool as readers see it."""

    slot_id: int
    pid: int | None
    connected_at: float  # wall clock
    checked_out: bool
    checked_out_at: float | None
    held_for_s: float | None
    holder: Holder | None
    site: tuple[Frame, ...]
    checkouts: int
    leak_class: LeakClass | None
    history: tuple[LifecycleEvent, ...]
    client_addr: str | None = None  # the app's end of its TCP socket (what a pooler sees)
    client_port: int | None = None
    worker: int | None = None  # pid of the worker process that holds it (several workers)


@dataclass(frozen=True, slots=True)
class LeakRecord:
    slot_id: int
    pid: int | None
    holder: Holder | None
    site: tuple[Frame, ...]
    leak_class: LeakClass
    detected_at: float
    held_for_s: float  # at detection, or until resolution once resolved
    resolved_at: float | None = None
    how_resolved: str | None = None  # returned, gc_reclaimed, invalidated, detached
    worker: int | None = None  # pid of the worker process (several workers)
    reason: str = ""  # "owner finished", "unused 3.2 s", "held past its 100 s ceiling"


@dataclass(frozen=True, slots=True)
class LongHold:
    """A connection held past the leak threshold by an owner still alive and still using it."""

    slot_id: int
    pid: int | None
    holder: Holder | None
    site: tuple[Frame, ...]
    held_for_s: float
    unused_for_s: float  # since the last statement ended (0 while one runs)
    ceiling_s: float  # past this it is a suspected leak however busy
    declared: bool  # the route declared it may hold long


@dataclass(frozen=True, slots=True)
class GcReclaim:
    at: float
    slot_id: int
    holder: Holder | None
    site: tuple[Frame, ...]
    held_for_s: float


@dataclass(frozen=True, slots=True)
class PoolTimeoutRecord:
    """Who held every connection when a checkout timed out."""

    at: float
    waited_s: float
    holders: tuple[ConnectionView, ...]
    waiter: Holder | None = None  # the request (or thread) that waited and got no connection
    site: tuple[Frame, ...] = ()  # where it asked for one


@dataclass(frozen=True, slots=True)
class SlowQueryGroup:
    fingerprint: str
    statement: str  # normalised: literals and parameters never kept
    count: int
    total_s: float
    max_s: float
    last_seen_at: float
    last_route: str | None
    last_site: tuple[Frame, ...] = ()  # the app line that ran it last


@dataclass(frozen=True, slots=True)
class MultiConnectionRequest:
    at: float
    route: str
    request_id: str
    connections: int  # the most it held at once
    sites: tuple[tuple[Frame, ...], ...] = ()  # where each of them was taken, oldest first


@dataclass(frozen=True, slots=True)
class MultiPoolRequest:
    """A request that used connections of several pools (a read/write split): not a violation."""

    at: float
    route: str
    request_id: str
    pools: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PoolCounters:
    checkouts: int
    connects: int
    invalidations_hard: int
    invalidations_soft: int
    closes: int
    detaches: int
    gc_reclaimed: int
    timeouts: int
    slow_queries: int
    statement_errors: int
    multi_connection_requests: int
    leaks_by_class: dict[str, int]
    listener_errors: int
    long_holds: int = 0  # holds past the threshold by a live, working owner
    multi_pool_requests: int = 0
    # By the holder's route ("GET /orders/{id}"; bounded, see `route_key`): which route leaks,
    # which route waited in vain.
    leaks_by_route: dict[str, int] = dataclasses.field(default_factory=dict)
    timeouts_by_route: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """Everything the tracker knows about one pool, at one instant."""

    pool_name: str
    taken_at: float
    leak_threshold_s: float
    slow_query_s: float
    connections: tuple[ConnectionView, ...]
    checked_out: int
    pending_requests: int
    counters: PoolCounters
    wait_time: HistogramSnapshot
    use_time: HistogramSnapshot
    create_time: HistogramSnapshot
    leaks: tuple[LeakRecord, ...]  # current suspects, oldest first
    resolved_leaks: tuple[LeakRecord, ...]  # most recent first
    gc_reclaims: tuple[GcReclaim, ...]
    timeouts: tuple[PoolTimeoutRecord, ...]
    slow_queries: tuple[SlowQueryGroup, ...]  # slowest total first
    multi_connection_requests: tuple[MultiConnectionRequest, ...]
    events: tuple[LifecycleEvent, ...]  # pool-wide notable events, most recent first
    # Backends of connections this pool detached and has not seen closed: its only true orphans.
    detached_pids: tuple[int, ...] = ()
    long_holds: tuple[LongHold, ...] = ()  # current, oldest first
    multi_pool_requests: tuple[MultiPoolRequest, ...] = ()  # most recent first
    # Checked out as the monitor counts minus as the pool counts, read when both agree on an
    # instant (None: the pool has no count to compare with).
    accounting_drift: int | None = None
    idle_in_transaction_min_s: float = 1.0  # the commit rule ignores younger ones


def to_dict(record: Any) -> Any:
    """Plain JSON-ready structure of any record (dataclasses, enums, tuples, floats)."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {
            field.name: to_dict(getattr(record, field.name)) for field in dataclasses.fields(record)
        }
    if isinstance(record, StrEnum):
        return record.value
    if isinstance(record, dict):
        return {str(key): to_dict(value) for key, value in record.items()}
    if isinstance(record, list | tuple):
        return [to_dict(item) for item in record]
    if isinstance(record, float) and record == float("inf"):
        return "+Inf"
    return record


@dataclass(frozen=True, slots=True)
class PoolStats:
    """The pool's own introspection, read at snapshot time (never kept by +1/-1 on events)."""

    pool_class: str
    size: int  # pool_size: connections kept open
    max_overflow: int  # -1: unlimited
    max_connections: int  # size + max_overflow: the pool's worst case, unless unbounded
    checked_out: int
    checked_in: int
    overflow: int  # connections beyond pool_size right now (clamped at 0)
    timeout_s: float | None
    recycle_s: float | None
    pre_ping: bool
    echo: bool
    # No maximum: max_overflow=-1, NullPool, SingletonThreadPool (max_connections means nothing).
    unbounded: bool = False
