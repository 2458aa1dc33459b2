"""A pooler (PgBouncer) between the app and PostgreSQL: is there one, and can the app's
connections be joined to server sessions through it.

The pids drivers report behind PgBouncer are its random cancel keys, not server pids: without
a join they must never be looked up in pg_stat_activity (false phantoms, invented states).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from monitor.state.pgbouncer import SESSION, PgBouncerHealthSnapshot
from monitor.state.records import NO_SERVER_SESSION, ConnectionView
from monitor.state.server import ServerHealthSnapshot

JOIN_DIRECT = "direct"  # no pooler: the driver's pid is the server's
JOIN_PGBOUNCER = "pgbouncer"  # session mode: app socket -> SHOW CLIENTS -> SHOW SERVERS -> pid
JOIN_NONE = "none"  # the join cannot exist, or the facts for it are missing


@dataclass(frozen=True, slots=True)
class PoolerInfo:
    """What the monitor knows about a pooler in the app's path, in words a reader can use."""

    detected: bool
    how: str  # how it was detected, or why none is assumed
    pool_mode: str | None  # session, transaction, statement; None when the console is not read
    console: str  # admin console: "not configured", "up", "down", "not read yet"
    join: str  # JOIN_DIRECT, JOIN_PGBOUNCER or JOIN_NONE
    why_no_join: str | None  # said on every held connection when join is JOIN_NONE


def pooler_info(
    server: ServerHealthSnapshot, pgbouncer: PgBouncerHealthSnapshot | None
) -> PoolerInfo:
    """Detect a pooler from the probe (its driver pid differs from pg_backend_pid()) or from a
    configured PgBouncer console; the pool mode comes from the console only."""
    sample = server.last_sample
    console = _console_state(pgbouncer)
    console_sample = pgbouncer.last_sample if pgbouncer is not None and pgbouncer.up else None
    via_probe = sample is not None and sample.via_pooler
    if not via_probe and pgbouncer is None:
        how = "the probe's driver pid is the server's" if sample else "no probe sample yet"
        return PoolerInfo(False, how, None, console, JOIN_DIRECT, None)
    how = (
        "the probe's driver pid differs from pg_backend_pid()"
        if via_probe
        else "pgbouncer_url is configured"
    )
    mode = (
        console_sample.pool_mode_for(sample.database if sample else None)
        if console_sample
        else None
    )
    if mode == SESSION:
        return PoolerInfo(True, how, mode, console, JOIN_PGBOUNCER, None)
    if mode is not None:
        why = (
            f"PgBouncer in {mode} mode lends a server session for one "
            f"{'transaction' if mode == 'transaction' else 'statement'} at a time: "
            "a held connection has no server session of its own"
        )
    elif pgbouncer is None:
        why = "behind a pooler of unknown mode: set pgbouncer_url to read its pools and join"
    else:
        why = f"behind PgBouncer, its admin console {console}: no join"
    return PoolerInfo(True, how, mode, console, JOIN_NONE, why)


def server_pids(
    connections: Iterable[ConnectionView],
    info: PoolerInfo,
    pgbouncer: PgBouncerHealthSnapshot | None,
) -> dict[int, int | None]:
    """Slot id -> the server pid of its session now (None: no session or no join possible)."""
    if info.join == JOIN_DIRECT:
        return {c.slot_id: c.pid for c in connections}
    sample = pgbouncer.last_sample if pgbouncer is not None and pgbouncer.up else None
    if info.join != JOIN_PGBOUNCER or sample is None:
        return {c.slot_id: None for c in connections}
    return {
        c.slot_id: sample.server_pid_for_client(c.client_addr, c.client_port) for c in connections
    }


def _console_state(pgbouncer: PgBouncerHealthSnapshot | None) -> str:
    if pgbouncer is None:
        return "not configured"
    if pgbouncer.up is None:
        return "not read yet"
    return "up" if pgbouncer.up else "down"


def states_by_driver_pid(
    connections: Iterable[ConnectionView],
    info: PoolerInfo,
    pgbouncer: PgBouncerHealthSnapshot | None,
    server_states: Mapping[int, str | None],
) -> dict[int, str | None]:
    """What the tracker classifies leaks by (driver pid -> server state) behind a pooler:
    the joined session's state, or NO_SERVER_SESSION where no join can exist."""
    connections = tuple(connections)
    pids = server_pids(connections, info, pgbouncer)
    result: dict[int, str | None] = {}
    for connection in connections:
        if connection.pid is None:
            continue
        if info.join == JOIN_NONE:
            result[connection.pid] = NO_SERVER_SESSION
            continue
        server_pid = pids.get(connection.slot_id)
        if server_pid is not None and server_pid in server_states:
            result[connection.pid] = server_states[server_pid]
    return result
