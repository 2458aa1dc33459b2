"""The monitor's whole picture: pool and server joined by backend pid, capacity, rule verdicts.

`build_view` is a pure function of snapshots, so it is tested with literal records.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from monitor.state.pgbouncer import PgBouncerHealthSnapshot
from monitor.state.pooler import JOIN_NONE, PoolerInfo, pooler_info, server_pids
from monitor.state.records import ConnectionView, PoolSnapshot, PoolStats
from monitor.state.server import (
    IDLE_IN_TRANSACTION_STATES,
    Backend,
    ServerHealthSnapshot,
    seconds_until_killed,
)
from monitor.state.verdicts import DEFAULT_WINDOW_S, RuleVerdict, VerdictWindow

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "")


@dataclass(frozen=True, slots=True)
class HeldConnection:
    """A checked-out pool connection with the server's view of its backend."""

    connection: ConnectionView
    server: Backend | None
    killed_by: str | None  # the server timeout that will end this session first
    killed_in_s: float | None
    server_pid: int | None = None  # its server session's pid (through a pooler: the joined one)
    no_server_view: str | None = None  # why no server state can exist for it (a pooler)


@dataclass(frozen=True, slots=True)
class Capacity:
    pool_max: int  # pool_size + max_overflow of this process
    server_available: int | None  # max_connections minus reserved slots
    server_sessions: int | None  # client sessions on the whole server right now
    used_ratio: float | None  # server_sessions / max_connections: 0-1, the headroom's share
    pool_share_ratio: float | None  # pool_max / server_available
    warning: str | None


@dataclass(frozen=True, slots=True)
class AppInfo:
    """How the app reaches its database; never the password or the query string."""

    database: str  # masked URL
    url_source: str  # "DATABASE_URL", "embedded", "engine"
    host_is_local: bool
    sslmode: str | None
    pools_observed: int


@dataclass(frozen=True, slots=True)
class MonitorView:
    pool: PoolSnapshot
    pool_stats: PoolStats
    server: ServerHealthSnapshot
    app: AppInfo
    held: tuple[HeldConnection, ...]
    orphans: tuple[Backend, ...]  # server sessions of this application the pool does not know
    phantoms: tuple[ConnectionView, ...]  # pool connections the server no longer has
    capacity: Capacity
    rules: tuple[RuleVerdict, ...]
    drift: int  # tracker's checked-out count minus the pool's own
    verdict_window_s: float = DEFAULT_WINDOW_S
    pooler: PoolerInfo | None = None
    pgbouncer: PgBouncerHealthSnapshot | None = None  # when its admin console is configured


def build_view(
    pool: PoolSnapshot,
    stats: PoolStats,
    server: ServerHealthSnapshot,
    app: AppInfo,
    verdicts: VerdictWindow | None = None,
    *,
    pgbouncer: PgBouncerHealthSnapshot | None = None,
) -> MonitorView:
    """`verdicts`: keeps each rule failing while its condition held within its window."""
    sample = server.last_sample if server.up else None
    by_pid = {b.pid: b for b in sample.backends} if sample is not None else {}
    pooler = pooler_info(server, pgbouncer)
    # Behind a pooler the drivers' pids are not server pids: only joined ones are looked up.
    pids = server_pids(pool.connections, pooler, pgbouncer)
    held: list[HeldConnection] = []
    for connection in pool.connections:
        if not connection.checked_out:
            continue
        server_pid = pids.get(connection.slot_id)
        backend = by_pid.get(server_pid) if server_pid is not None else None
        checked_out_at = connection.checked_out_at
        if sample is not None and checked_out_at is not None and sample.taken_at < checked_out_at:
            backend = None  # sampled before this checkout: the previous holder's state
        timer = seconds_until_killed(backend, sample.settings) if backend and sample else None
        held.append(
            HeldConnection(
                connection,
                backend,
                timer[0] if timer else None,
                timer[1] if timer else None,
                server_pid=server_pid,
                no_server_view=pooler.why_no_join if pooler.join == JOIN_NONE else None,
            )
        )
    held.sort(key=lambda h: h.connection.held_for_s or 0.0, reverse=True)

    orphans: tuple[Backend, ...] = ()
    phantoms: tuple[ConnectionView, ...] = ()
    if sample is not None and pooler.join != JOIN_NONE:
        known = {pid for pid in pids.values() if pid is not None}
        names = {by_pid[pid].application_name for pid in known if pid in by_pid}
        orphans = tuple(
            b for b in sample.backends if b.application_name in names and b.pid not in known
        )
        # Through PgBouncer a client not linked to a server (yet) has no pid to miss.
        phantoms = tuple(
            c
            for c in pool.connections
            if pids.get(c.slot_id) is not None
            and pids[c.slot_id] not in by_pid
            and c.connected_at < sample.taken_at
        )
    capacity = _capacity(stats, server)
    view = MonitorView(
        pool=pool,
        pool_stats=stats,
        server=server,
        app=app,
        held=tuple(held),
        orphans=orphans,
        phantoms=phantoms,
        capacity=capacity,
        rules=(),
        drift=(
            pool.accounting_drift
            if pool.accounting_drift is not None
            else pool.checked_out - stats.checked_out
        ),
        verdict_window_s=verdicts.window_s if verdicts is not None else DEFAULT_WINDOW_S,
        pooler=pooler,
        pgbouncer=pgbouncer,
    )
    rules = evaluate_rules(view)
    return dataclasses.replace(view, rules=verdicts.apply(rules) if verdicts else rules)


def _capacity(stats: PoolStats, server: ServerHealthSnapshot) -> Capacity:
    sample = server.last_sample
    if sample is None:
        return Capacity(stats.max_connections, None, None, None, None, None)
    available = sample.settings.available_connections
    used = sample.total_client_sessions
    max_connections = sample.settings.max_connections
    # Over max_connections, not the slots open to ordinary roles: superusers' sessions use the
    # reserved slots, so that ratio passes 1 while this one stays within 0-1.
    used_ratio = used / max_connections if max_connections > 0 else None
    share = stats.max_connections / available if available > 0 else None
    warning = None
    if share is not None and share > 1:
        warning = (
            f"the pool may open {stats.max_connections} connections but the server accepts "
            f"only {available}"
        )
    elif used_ratio is not None and used_ratio >= 0.8:
        warning = f"{used} of {max_connections} server connections in use ({used_ratio:.0%})"
    elif share is not None and share > 0.5:
        warning = f"this one pool may take {share:.0%} of the server's connections"
    return Capacity(stats.max_connections, available, used, used_ratio, share, warning)


def evaluate_rules(view: MonitorView) -> tuple[RuleVerdict, ...]:
    """A live verdict for each rule of the connection guide, with a one-line why."""
    pool, stats = view.pool, view.pool_stats
    verdicts = []

    pools = view.app.pools_observed
    verdicts.append(
        RuleVerdict("One engine per app", "ok" if pools <= 1 else "warn",
                    f"{pools} connection pool(s) seen in this process")
    )  # fmt: skip

    now, window = pool.taken_at, view.verdict_window_s
    cutoff = now - window
    recently = f"in the last {_window_text(window)}"

    multi = [m for m in pool.multi_connection_requests if m.at >= cutoff]
    # Connections of several pools in one request (a read/write split): said, not a violation.
    split = sum(1 for m in pool.multi_pool_requests if m.at >= cutoff)
    pools_used = f"; {split} request(s) used several pools" if split else ""
    if not multi:
        verdicts.append(
            RuleVerdict("One session per request", "ok",
                        f"no request held two connections of the pool at once {recently}"
                        + pools_used)
        )  # fmt: skip
    else:
        last = multi[0]
        verdicts.append(
            RuleVerdict(
                "One session per request", "warn",
                f"{len(multi)} request(s) held several connections at once {recently}, "
                f"last {last.route} ({last.connections})" + pools_used,
                since=min(m.at for m in multi), last_held_at=max(m.at for m in multi),
            )
        )  # fmt: skip

    leaks = len(pool.leaks)
    reclaims = [r for r in pool.gc_reclaims if r.at >= cutoff]
    resolved = [
        r for r in pool.resolved_leaks if r.resolved_at is not None and r.resolved_at >= cutoff
    ]
    if leaks == 0 and not reclaims and not resolved:
        verdicts.append(
            RuleVerdict(
                "Always close sessions",
                "ok",
                f"no leak, nothing left to the garbage collector {recently}",
            )
        )
    else:
        parts = []
        if leaks:
            parts.append(f"{leaks} suspected leak(s) now")
        if resolved:
            parts.append(f"{len(resolved)} suspected leak(s) ended {recently}")
        if reclaims:
            parts.append(f"{len(reclaims)} reclaimed by the garbage collector {recently}")
        began = [leak.detected_at for leak in pool.leaks + tuple(resolved)]
        began += [r.at for r in reclaims]
        ended = [r.resolved_at or now for r in resolved] + [r.at for r in reclaims]
        verdicts.append(
            RuleVerdict(
                "Always close sessions", "fail", ", ".join(parts),
                since=min(began), last_held_at=None if leaks else max(ended),
            )
        )  # fmt: skip

    # Between two statements of one transaction a connection is idle in transaction for
    # milliseconds: only those idle that way for the minimum age count.
    min_age = pool.idle_in_transaction_min_s
    idle_in_tx = [
        h
        for h in view.held
        if h.server is not None
        and (h.server.state or "").startswith("idle in transaction")
        and (h.server.state_age_s or 0.0) >= min_age
    ]
    idle_ages = [h.server.state_age_s or 0.0 for h in idle_in_tx if h.server is not None]
    idle_tx = len(idle_ages)
    # Suspected leaks among them, whatever their class (one that outlived its request too).
    leaked_tx = sum(1 for h in idle_in_tx if h.connection.leak_class is not None)
    status = "ok" if idle_tx == 0 else ("fail" if leaked_tx else "warn")
    why = (
        f"{idle_tx} held connection(s) idle in transaction for {min_age:g} s or more"
        + (f" (oldest {max(idle_ages):.1f} s)" if idle_ages else "")
        + (f", {leaked_tx} of them suspected leaks" if leaked_tx else "")
    )
    sample = view.server.last_sample if view.server.up else None
    if view.pooler is not None and view.pooler.join == JOIN_NONE and sample is not None:
        # No held connection has a server session to look at: say what the server shows.
        server_idle_tx = sum(
            1
            for b in sample.backends
            if b.state in IDLE_IN_TRANSACTION_STATES and (b.state_age_s or 0.0) >= min_age
        )
        status = "ok" if server_idle_tx == 0 else "warn"
        why = (
            f"{server_idle_tx} server session(s) of {sample.database} idle in transaction "
            f"for {min_age:g} s or more; behind the pooler they cannot be tied to this pool's "
            "connections"
        )
    verdicts.append(RuleVerdict("Commit explicitly, handle rollbacks", status, why))

    problems = []
    if view.capacity.pool_share_ratio is not None and view.capacity.pool_share_ratio > 1:
        problems.append(view.capacity.warning or "pool larger than the server allows")
    if not stats.pre_ping:
        problems.append("pool_pre_ping off")
    if stats.recycle_s is None:
        problems.append("no pool_recycle")
    settings_text = (
        f"pool_size {stats.size}, max_overflow {stats.max_overflow}, "
        f"timeout {_seconds(stats.timeout_s)}, recycle {_seconds(stats.recycle_s)}, "
        f"pre_ping {'on' if stats.pre_ping else 'off'}"
    )
    pool_status = "ok" if not problems else ("fail" if "server" in problems[0] else "warn")
    timeouts = [t for t in pool.timeouts if t.at >= cutoff]
    timed_out_at: tuple[float | None, float | None] = (None, None)
    if timeouts and pool_status == "ok":
        # An event between two looks: it held from the first timeout to the last one.
        timed_out_at = (min(t.at for t in timeouts), max(t.at for t in timeouts))
    if timeouts:
        pool_status = "fail"
        problems.insert(0, f"{len(timeouts)} checkout(s) timed out waiting {recently}")
    verdicts.append(
        RuleVerdict(
            "Use the pool",
            pool_status,
            ("; ".join(problems) + "; " if problems else "") + settings_text,
            since=timed_out_at[0],
            last_held_at=timed_out_at[1],
        )
    )
    verdicts.append(
        RuleVerdict("Query logging only in development", "warn" if stats.echo else "ok",
                    "echo is on: every statement is logged" if stats.echo else "echo is off")
    )  # fmt: skip
    slow = [g for g in pool.slow_queries if g.last_seen_at >= cutoff]
    verdicts.append(
        RuleVerdict("Index frequently queried columns", "ok" if not slow else "warn",
                    f"no statement slower than {pool.slow_query_s:g}s {recently}" if not slow
                    else f"{len(slow)} slow statement shape(s) {recently}; the slowest may need an index",
                    since=min((g.last_seen_at for g in slow), default=None),
                    last_held_at=max((g.last_seen_at for g in slow), default=None))
    )  # fmt: skip

    app = view.app
    secure = app.sslmode in ("require", "verify-ca", "verify-full")
    tls_ok = secure or app.host_is_local
    verdicts.append(
        RuleVerdict("Credentials from the environment, TLS",
                    "ok" if tls_ok and app.url_source != "hard-coded" else "warn",
                    f"URL from {app.url_source}; sslmode {app.sslmode or 'not set'}"
                    + ("" if secure else " (local connection)" if app.host_is_local else " on a remote host"))
    )  # fmt: skip
    return tuple(verdicts)


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value:g} s"


def _window_text(window_s: float) -> str:
    if window_s >= 3600 and window_s % 3600 == 0:
        return f"{window_s / 3600:g} h"
    if window_s >= 60 and window_s % 60 == 0:
        return f"{window_s / 60:g} min"
    return f"{window_s:g} s"
