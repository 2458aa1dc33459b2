"""Prometheus families of PgBouncer's pools, read from the last admin-console sample.

Under the monitor's own prefix (`pool_monitor_pgbouncer_*`), so they never clash with a
pgbouncer_exporter scraping the same PgBouncer.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from monitor.metrics import names
from monitor.state.pgbouncer import PgBouncerHealthSnapshot

_POOL_LABELS = [names.DATABASE, names.USER]


def pgbouncer_families(health: PgBouncerHealthSnapshot) -> Iterator[Metric]:
    """Up and error count always; pool series only from a fresh sample (absent when down)."""
    yield GaugeMetricFamily(
        names.PGBOUNCER_UP,
        "1 when the last read of PgBouncer's admin console succeeded.",
        value=1.0 if health.up else 0.0,
    )
    yield CounterMetricFamily(
        names.PGBOUNCER_PROBE_ERRORS_TOTAL,
        "Reads of PgBouncer's admin console that failed.",
        value=health.errors_total,
    )
    sample = health.last_sample if health.up else None
    if sample is None:
        return
    clients = GaugeMetricFamily(
        names.PGBOUNCER_CLIENTS,
        "Client connections of a PgBouncer pool: active (linked or idle) and waiting for a server.",
        labels=[*_POOL_LABELS, names.PGBOUNCER_STATE],
    )
    servers = GaugeMetricFamily(
        names.PGBOUNCER_SERVERS,
        "Server connections of a PgBouncer pool by state.",
        labels=[*_POOL_LABELS, names.PGBOUNCER_STATE],
    )
    max_wait = GaugeMetricFamily(
        names.PGBOUNCER_MAX_WAIT_SECONDS,
        "How long the oldest client waiting for a server of this pool has waited.",
        labels=_POOL_LABELS,
    )
    info = GaugeMetricFamily(
        names.PGBOUNCER_POOL_INFO,
        "A PgBouncer pool and its pool_mode (value 1).",
        labels=[*_POOL_LABELS, names.POOL_MODE],
    )
    for pool in sample.app_pools():
        labels = [pool.database, pool.user]
        clients.add_metric([*labels, "active"], pool.clients_active)
        clients.add_metric([*labels, "waiting"], pool.clients_waiting)
        for state, count in (
            ("active", pool.servers_active),
            ("idle", pool.servers_idle),
            ("used", pool.servers_used),
            ("tested", pool.servers_tested),
            ("login", pool.servers_login),
        ):
            servers.add_metric([*labels, state], count)
        max_wait.add_metric(labels, pool.max_wait_s)
        info.add_metric([*labels, pool.pool_mode or sample.pool_mode or ""], 1.0)
    yield from (clients, servers, max_wait, info)
    transactions = CounterMetricFamily(
        names.PGBOUNCER_TRANSACTIONS_TOTAL,
        "Transactions PgBouncer pooled since it started.",
        labels=[names.DATABASE],
    )
    queries = CounterMetricFamily(
        names.PGBOUNCER_QUERIES_TOTAL,
        "Queries PgBouncer pooled since it started.",
        labels=[names.DATABASE],
    )
    waited = CounterMetricFamily(
        names.PGBOUNCER_WAIT_SECONDS_TOTAL,
        "Seconds clients spent waiting for a server since PgBouncer started.",
        labels=[names.DATABASE],
    )
    for stats in sample.stats:
        if stats.database == "pgbouncer":
            continue
        transactions.add_metric([stats.database], stats.transactions)
        queries.add_metric([stats.database], stats.queries)
        waited.add_metric([stats.database], stats.wait_time_s)
    yield from (transactions, queries, waited)
    if sample.max_client_conn is not None:
        yield GaugeMetricFamily(
            names.PGBOUNCER_MAX_CLIENT_CONN,
            "PgBouncer's max_client_conn: clients it accepts in all.",
            value=sample.max_client_conn,
        )
