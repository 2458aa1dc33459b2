"""PgBouncer's admin console: the row parsers on literal rows, and one read of a real console."""

from __future__ import annotations

from monitor.probes.pgbouncer import (
    PgBouncerProbe,
    admin_connect_kwargs,
    build_sample,
    parse_config,
    parse_peers,
    parse_pools,
    parse_stats,
)
from monitor.state.pgbouncer import PgBouncerHealth
from tests.pgbouncer import PgBouncer

POOL_ROW = {
    "database": "app", "user": "svc", "cl_active": 4, "cl_waiting": 6, "sv_active": 2,
    "sv_idle": 0, "sv_used": 1, "sv_tested": 0, "sv_login": 0, "maxwait": 3,
    "maxwait_us": 250000, "pool_mode": "transaction",
}  # fmt: skip
CLIENT = {
    "type": "C", "user": "svc", "database": "app", "state": "active", "addr": "10.0.0.5",
    "port": 54868, "local_addr": "10.0.0.9", "local_port": 6432, "wait": 0, "wait_us": 0,
    "ptr": "0x1", "link": "0x2", "remote_pid": 0, "application_name": "api",
}  # fmt: skip
SERVER = {**CLIENT, "type": "S", "addr": "10.0.0.7", "port": 5432, "local_port": 36060,
          "ptr": "0x2", "link": "0x1", "remote_pid": 24764}  # fmt: skip


def test_pools_rows_become_records_with_wait_in_seconds() -> None:
    (pool,) = parse_pools([POOL_ROW])
    assert (pool.database, pool.user, pool.pool_mode) == ("app", "svc", "transaction")
    assert (pool.clients_active, pool.clients_waiting) == (4, 6)
    assert (pool.servers_active, pool.servers_idle, pool.servers_used) == (2, 0, 1)
    assert pool.max_wait_s == 3.25


def test_an_older_pgbouncer_without_microsecond_columns_still_parses() -> None:
    row = {k: v for k, v in POOL_ROW.items() if k not in ("maxwait_us", "sv_tested", "pool_mode")}
    (pool,) = parse_pools([row])
    assert pool.max_wait_s == 3 and pool.servers_tested == 0 and pool.pool_mode is None


def test_stats_counters_arrive_as_text_and_microseconds() -> None:
    (stats,) = parse_stats(
        [{"database": "app", "total_xact_count": "12", "total_query_count": "30",
          "total_wait_time": "2500000"}]
    )  # fmt: skip
    assert (stats.transactions, stats.queries, stats.wait_time_s) == (12, 30, 2.5)


def test_the_join_follows_client_socket_to_linked_server_pid() -> None:
    sample = build_sample(
        taken_at=0.0, duration_s=0.01, pools=[POOL_ROW], stats=[], clients=[CLIENT],
        servers=[SERVER], config=[{"key": "pool_mode", "value": "session"},
                                  {"key": "max_client_conn", "value": "100"},
                                  {"key": "listen_port", "value": "6432"}],
    )  # fmt: skip
    assert sample.server_pid_for_client("10.0.0.5", 54868) == 24764
    assert sample.server_pid_for_client("10.0.0.6", 54868) is None  # another host's port
    assert sample.server_pid_for_client(None, 1) is None
    unlinked = parse_peers([{**CLIENT, "link": ""}])
    assert unlinked[0].link is None
    assert sample.pool_mode_for("app") == "transaction"  # the pool's own mode wins
    assert sample.pool_mode_for("other") == "session"
    assert sample.max_client_conn == 100
    assert parse_config([{"key": "listen_port", "value": "1"}]) == {}


def test_admin_url_keeps_libpq_parameters_and_sets_the_bounds() -> None:
    kwargs = admin_connect_kwargs(
        "postgresql://stats:pw@bouncer:6432/pgbouncer?sslmode=require&command_timeout=5", 2.0, "x"
    )
    assert kwargs == {
        "sslmode": "require", "host": "bouncer", "port": 6432, "user": "stats", "password": "pw",
        "dbname": "pgbouncer", "application_name": "x", "connect_timeout": 2,
    }  # fmt: skip


def test_a_real_console_read(pgbouncer_session: PgBouncer) -> None:
    health = PgBouncerHealth()
    PgBouncerProbe(pgbouncer_session.admin_url, health, timeout_s=2.0).run_once()
    snapshot = health.snapshot()
    assert snapshot.up is True, snapshot.last_error
    assert snapshot.last_sample is not None
    assert snapshot.last_sample.pool_mode == "session"
    assert snapshot.last_sample.clients  # the probe's own console client at least


def test_an_unreachable_console_is_recorded_not_raised() -> None:
    health = PgBouncerHealth()
    PgBouncerProbe("postgresql://u:s3cret@127.0.0.1:1/pgbouncer", health, timeout_s=1.0).run_once()
    snapshot = health.snapshot()
    assert snapshot.up is False and snapshot.errors_total == 1
    assert snapshot.last_error and "s3cret" not in snapshot.last_error
