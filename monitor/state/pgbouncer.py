"""PgBouncer's side of the picture: its pools, clients and servers from the admin console.

Pure records, the join from an app connection's socket to the server pid it is linked with,
and a thread-safe holder the PgBouncer probe writes and every reader snapshots.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from monitor.state.clock import Clock, wall
from monitor.state.server import short_error

SESSION = "session"
TRANSACTION = "transaction"
STATEMENT = "statement"
ADMIN_DATABASE = "pgbouncer"  # the console's own pool, not one the app uses


@dataclass(frozen=True, slots=True)
class PgBouncerPool:
    """One SHOW POOLS row: a (database, user) pool."""

    database: str
    user: str
    pool_mode: str | None
    clients_active: int
    clients_waiting: int
    servers_active: int
    servers_idle: int
    servers_used: int
    servers_tested: int
    servers_login: int
    max_wait_s: float  # how long the oldest waiting client has waited


@dataclass(frozen=True, slots=True)
class PgBouncerStats:
    """One SHOW STATS row: totals since PgBouncer started, per database."""

    database: str
    transactions: int
    queries: int
    wait_time_s: float  # total time clients waited for a server


@dataclass(frozen=True, slots=True)
class PgBouncerPeer:
    """One SHOW CLIENTS or SHOW SERVERS row: a socket PgBouncer holds, and what it is linked to."""

    database: str
    user: str
    state: str
    addr: str | None  # the peer's address (the app for a client, PostgreSQL for a server)
    port: int | None
    local_port: int | None  # PgBouncer's end of the socket
    ptr: str
    link: str | None  # ptr of the server (for a client) or client (for a server) it is paired with
    remote_pid: int | None  # for a server: the PostgreSQL backend pid
    application_name: str | None
    wait_s: float


@dataclass(frozen=True, slots=True)
class PgBouncerSample:
    """One successful read of the admin console."""

    taken_at: float
    duration_s: float
    pool_mode: str | None  # the default pool_mode from SHOW CONFIG
    max_client_conn: int | None
    default_pool_size: int | None
    pools: tuple[PgBouncerPool, ...]
    stats: tuple[PgBouncerStats, ...]
    clients: tuple[PgBouncerPeer, ...]
    servers: tuple[PgBouncerPeer, ...]

    def pool_mode_for(self, database: str | None) -> str | None:
        """The pool mode app connections to `database` get (a pool's own, else the default)."""
        for pool in self.pools:
            if pool.database == database and pool.pool_mode:
                return pool.pool_mode
        return self.pool_mode

    def server_pid_for_client(self, addr: str | None, port: int | None) -> int | None:
        """The PostgreSQL pid a client socket (the app's end, addr:port) is linked with now."""
        if port is None:
            return None
        servers = {server.ptr: server for server in self.servers}
        for client in self.clients:
            if client.port != port or (addr is not None and client.addr not in (addr, None)):
                continue
            server = servers.get(client.link or "")
            return server.remote_pid if server is not None and server.remote_pid else None
        return None

    def app_pools(self) -> tuple[PgBouncerPool, ...]:
        return tuple(pool for pool in self.pools if pool.database != ADMIN_DATABASE)


@dataclass(frozen=True, slots=True)
class PgBouncerHealthSnapshot:
    up: bool | None  # None before the first read finished
    last_sample: PgBouncerSample | None  # kept when down: stale exactly when `up` is False
    errors_total: int
    last_error: str | None
    last_success_at: float | None
    last_duration_s: float | None


class PgBouncerHealth:
    """Thread-safe holder written by the PgBouncer probe, read by metrics and the dashboard."""

    def __init__(self, *, clock: Clock = wall) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._up: bool | None = None
        self._last_sample: PgBouncerSample | None = None
        self._errors_total = 0
        self._last_error: str | None = None
        self._last_success_at: float | None = None
        self._last_duration_s: float | None = None

    def record_success(self, sample: PgBouncerSample) -> None:
        now = self._clock()
        with self._lock:
            self._up = True
            self._last_sample = sample
            self._last_success_at = now
            self._last_duration_s = sample.duration_s

    def record_failure(self, error: str, duration_s: float) -> None:
        message = short_error(error)
        with self._lock:
            self._up = False
            self._errors_total += 1
            self._last_error = message
            self._last_duration_s = duration_s

    def snapshot(self) -> PgBouncerHealthSnapshot:
        with self._lock:
            return PgBouncerHealthSnapshot(
                up=self._up,
                last_sample=self._last_sample,
                errors_total=self._errors_total,
                last_error=self._last_error,
                last_success_at=self._last_success_at,
                last_duration_s=self._last_duration_s,
            )
