"""PgBouncer's admin console (`pgbouncer` database): pure row parsers and one bounded read.

The console speaks only the simple query protocol and has no transactions, so it is read with
a bare psycopg2 connection in autocommit, opened per read (it holds no slot between reads).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import psycopg2
from sqlalchemy.engine import URL, make_url

from monitor.socket_deadline import SocketDeadline
from monitor.state.pgbouncer import (
    PgBouncerHealth,
    PgBouncerPeer,
    PgBouncerPool,
    PgBouncerSample,
    PgBouncerStats,
)
from monitor.urls import probe_psycopg2_url

log = logging.getLogger(__name__)

Row = Mapping[str, Any]
CONFIG_KEYS = ("pool_mode", "max_client_conn", "default_pool_size")
# SHOW CLIENTS can list max_client_conn rows (thousands): keep memory and snapshots bounded.
MAX_PEERS = 2000
MIN_CONNECT_TIMEOUT_S = 2


def parse_pools(rows: Iterable[Row]) -> tuple[PgBouncerPool, ...]:
    """SHOW POOLS rows (PgBouncer 1.x; columns a version lacks count as 0)."""
    return tuple(
        PgBouncerPool(
            database=str(row["database"]),
            user=str(row["user"]),
            pool_mode=_optional_str(row.get("pool_mode")),
            clients_active=_int(row.get("cl_active")),
            clients_waiting=_int(row.get("cl_waiting")),
            servers_active=_int(row.get("sv_active")),
            servers_idle=_int(row.get("sv_idle")),
            servers_used=_int(row.get("sv_used")),
            servers_tested=_int(row.get("sv_tested")),
            servers_login=_int(row.get("sv_login")),
            max_wait_s=_int(row.get("maxwait")) + _int(row.get("maxwait_us")) / 1e6,
        )
        for row in rows
    )


def parse_stats(rows: Iterable[Row]) -> tuple[PgBouncerStats, ...]:
    """SHOW STATS rows: cumulative transactions, queries and client wait time per database."""
    return tuple(
        PgBouncerStats(
            database=str(row["database"]),
            transactions=_int(row.get("total_xact_count")),
            queries=_int(row.get("total_query_count")),
            wait_time_s=_int(row.get("total_wait_time")) / 1e6,  # microseconds
        )
        for row in rows
    )


def parse_peers(rows: Iterable[Row]) -> tuple[PgBouncerPeer, ...]:
    """SHOW CLIENTS or SHOW SERVERS rows."""
    return tuple(
        PgBouncerPeer(
            database=str(row.get("database") or ""),
            user=str(row.get("user") or ""),
            state=str(row.get("state") or ""),
            addr=_optional_str(row.get("addr")),
            port=_optional_int(row.get("port")),
            local_port=_optional_int(row.get("local_port")),
            ptr=str(row.get("ptr") or ""),
            link=_optional_str(row.get("link")),
            remote_pid=_optional_int(row.get("remote_pid")) or None,
            application_name=_optional_str(row.get("application_name")),
            wait_s=_int(row.get("wait")) + _int(row.get("wait_us")) / 1e6,
        )
        for row in rows
    )


def parse_config(rows: Iterable[Row]) -> dict[str, str]:
    """The SHOW CONFIG values the monitor reads (pool_mode, max_client_conn, default_pool_size)."""
    return {
        str(row["key"]): str(row["value"]) for row in rows if str(row.get("key")) in CONFIG_KEYS
    }


def build_sample(
    *,
    taken_at: float,
    duration_s: float,
    pools: Iterable[Row],
    stats: Iterable[Row],
    clients: Iterable[Row],
    servers: Iterable[Row],
    config: Iterable[Row],
) -> PgBouncerSample:
    settings = parse_config(config)
    return PgBouncerSample(
        taken_at=taken_at,
        duration_s=duration_s,
        pool_mode=settings.get("pool_mode"),
        max_client_conn=_optional_int(settings.get("max_client_conn")),
        default_pool_size=_optional_int(settings.get("default_pool_size")),
        pools=parse_pools(pools),
        stats=parse_stats(stats),
        clients=parse_peers(clients)[:MAX_PEERS],
        servers=parse_peers(servers)[:MAX_PEERS],
    )


def admin_connect_kwargs(url: str | URL, timeout_s: float, application_name: str) -> dict[str, Any]:
    """psycopg2.connect keywords for the admin console URL (its libpq parameters kept)."""
    parsed, _dropped = probe_psycopg2_url(make_url(url) if isinstance(url, str) else url)
    kwargs: dict[str, Any] = {
        key: value if isinstance(value, str) else value[-1] for key, value in parsed.query.items()
    }
    for key, value in (
        ("host", parsed.host),
        ("port", parsed.port),
        ("user", parsed.username),
        ("password", parsed.password),
    ):
        if value is not None:
            kwargs.setdefault(key, value)
    kwargs["dbname"] = parsed.database or "pgbouncer"
    kwargs["application_name"] = application_name
    kwargs["connect_timeout"] = max(MIN_CONNECT_TIMEOUT_S, math.ceil(timeout_s))
    return kwargs


class PgBouncerProbe:
    """Reads the admin console into a PgBouncerHealth; bounded by `timeout_s`, one read at a time."""

    def __init__(
        self,
        url: str | URL,
        health: PgBouncerHealth,
        *,
        timeout_s: float = 2.0,
        application_name: str = "pool-monitor-probe",
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.health = health
        self.timeout_s = timeout_s
        self._connect_kwargs = admin_connect_kwargs(url, timeout_s, application_name)
        self._clock = clock
        self._monotonic = monotonic
        self._in_flight = threading.Lock()
        self._last_up: bool | None = None

    def run_once(self) -> None:
        """Read the console once and record the outcome; skips if a read is still running."""
        if not self._in_flight.acquire(blocking=False):
            return
        try:
            self._run()
        except Exception:  # a bug here must not kill the scheduler thread
            log.exception("PgBouncer probe crashed")
        finally:
            self._in_flight.release()

    def _run(self) -> None:
        started = self._monotonic()
        taken_at = self._clock()
        deadline = SocketDeadline(self.timeout_s)
        try:
            results = self._read(deadline)
        except Exception as exc:
            duration_s = self._monotonic() - started
            error = f"{type(exc).__name__}: {str(exc).strip()}"
            self.health.record_failure(error, duration_s)
            if self._last_up is not False:
                log.warning(
                    "PgBouncer admin console unreachable: %s", self.health.snapshot().last_error
                )
            self._last_up = False
            return
        finally:
            deadline.close()
        sample = build_sample(taken_at=taken_at, duration_s=self._monotonic() - started, **results)
        self.health.record_success(sample)
        self._last_up = True

    def _read(self, deadline: SocketDeadline) -> dict[str, list[dict[str, Any]]]:
        connection = psycopg2.connect(**self._connect_kwargs)
        try:
            deadline.attach(connection)
            connection.autocommit = True  # the console refuses BEGIN
            results: dict[str, list[dict[str, Any]]] = {}
            with connection.cursor() as cursor:
                for key, command in (
                    ("pools", "SHOW POOLS"),
                    ("stats", "SHOW STATS"),
                    ("clients", "SHOW CLIENTS"),
                    ("servers", "SHOW SERVERS"),
                    ("config", "SHOW CONFIG"),
                ):
                    cursor.execute(command)
                    columns = [column.name for column in cursor.description or ()]
                    results[key] = [dict(zip(columns, row, strict=True)) for row in cursor]
            return results
        finally:
            connection.close()


def _int(value: Any) -> int:
    return 0 if value is None or value == "" else int(value)


def _optional_int(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)


def _optional_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)
