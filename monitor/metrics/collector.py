"""Prometheus view of the monitor: its `views()` once per scrape, no metric state kept.

Reads only in-memory snapshots: a scrape never touches the database or waits for a connection.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from monitor.metrics import names
from monitor.metrics.pgbouncer import pgbouncer_families
from monitor.sources import MetricsSource
from monitor.state.histogram import HistogramSnapshot
from monitor.state.records import LeakClass
from monitor.state.server import (
    ServerHealthSnapshot,
    ServerSample,
    blocked_sessions,
    max_tx_age_by_state,
    sessions_by_state,
)
from monitor.state.view import MonitorView

_POOL = [names.POOL_NAME]


class MonitorCollector(Collector):
    """Yields every pool, server and probe family from one view; nothing until a monitor exists."""

    def __init__(self, get_monitor: Callable[[], MetricsSource | None]) -> None:
        self._get_monitor = get_monitor

    def collect(self) -> Iterator[Metric]:
        monitor = self._get_monitor()
        if monitor is None:
            return
        yield from merged(self._families(monitor))

    def _families(self, monitor: MetricsSource) -> Iterator[Metric]:
        for view in monitor.views(detail=False):
            yield from pool_families(view)
            # Without a probe there is no server view: an up of 0 would claim the server is down.
            if monitor.probe_enabled:
                yield from server_families(view)
                yield from probe_families(view.server)
            # One PgBouncer console per monitor: every pool's view carries the same one.
            if view.pgbouncer is not None:
                yield from pgbouncer_families(view.pgbouncer)

    def describe(self) -> Iterable[Metric]:
        # Registering must not take a view (the monitor may not exist yet).
        return ()


def merged(families: Iterable[Metric]) -> Iterator[Metric]:
    """One family per name holding every pool's samples (a name twice is invalid exposition).
    A sample already there with the same labels is dropped: pools of one server repeat its
    facts, and with several servers the primary's come first."""
    by_name: dict[str, Metric] = {}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for family in families:
        kept = by_name.setdefault(family.name, family)
        samples = family.samples
        if kept is family:
            family.samples = []
        for sample in samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key not in seen:
                seen.add(key)
                kept.samples.append(sample)
    yield from by_name.values()


def pool_families(view: MonitorView) -> Iterator[Metric]:
    """Client-side families of one pool, all labelled with its `pool_name`."""
    pool, stats, counters = view.pool, view.pool_stats, view.pool.counters
    labels = [pool.pool_name]

    count = GaugeMetricFamily(
        names.CONNECTION_COUNT,
        "Connections of the pool by state: used (checked out) or idle (in the pool).",
        labels=[names.POOL_NAME, names.STATE],
    )
    count.add_metric([pool.pool_name, names.STATE_USED], stats.checked_out)
    count.add_metric([pool.pool_name, names.STATE_IDLE], stats.checked_in)
    yield count
    if not stats.unbounded:  # no maximum (max_overflow=-1, NullPool): no false one either
        yield _gauge(
            names.CONNECTION_MAX,
            "Most connections the pool may open (pool_size + max_overflow).",
            labels,
            stats.max_connections,
        )
    yield _gauge(
        names.CONNECTION_IDLE_MAX,
        "Most idle connections the pool keeps open (pool_size).",
        labels,
        stats.size,
    )
    yield _gauge(
        names.PENDING_REQUESTS,
        "Callers waiting for a connection of the pool right now.",
        labels,
        pool.pending_requests,
    )
    yield _counter(
        names.TIMEOUTS_TOTAL,
        "Checkouts that gave up after the pool timeout.",
        labels,
        counters.timeouts,
    )
    yield _histogram(
        names.WAIT_TIME_SECONDS,
        "Seconds a checkout waited for a connection.",
        labels,
        pool.wait_time,
    )
    yield _histogram(
        names.USE_TIME_SECONDS,
        "Seconds a connection stayed checked out, from checkout to checkin.",
        labels,
        pool.use_time,
    )
    yield _histogram(
        names.CREATE_TIME_SECONDS,
        "Seconds taken to open a new database connection.",
        labels,
        pool.create_time,
    )
    yield _gauge(
        names.POOL_OVERFLOW,
        "Connections open beyond pool_size right now.",
        labels,
        stats.overflow,
    )

    current = Counter(leak.leak_class.value for leak in pool.leaks)
    leaked = GaugeMetricFamily(
        names.LEAKED_CONNECTIONS,
        "Suspected leaks right now: outlived_owner, or what the server sees them do.",
        labels=[names.POOL_NAME, names.CLASS],
    )
    leaks_total = CounterMetricFamily(
        names.LEAKS_TOTAL,
        "Connections flagged as leaked, by class at detection.",
        labels=[names.POOL_NAME, names.CLASS],
    )
    # Every class is always present so rate() and alerts see a 0 rather than no series.
    for leak_class in LeakClass:
        leaked.add_metric([pool.pool_name, leak_class.value], current[leak_class.value])
        leaks_total.add_metric(
            [pool.pool_name, leak_class.value], counters.leaks_by_class.get(leak_class.value, 0)
        )
    yield leaked
    yield leaks_total
    yield _by_route(
        names.LEAKS_BY_ROUTE_TOTAL,
        "Connections flagged as leaked, by the route that held them.",
        pool.pool_name,
        counters.leaks_by_route,
    )
    yield _by_route(
        names.TIMEOUTS_BY_ROUTE_TOTAL,
        "Checkouts that gave up after the pool timeout, by the route that waited.",
        pool.pool_name,
        counters.timeouts_by_route,
    )

    yield _gauge(
        names.LONG_HOLDS,
        "Connections held past the leak threshold right now by a live owner still using them.",
        labels,
        len(pool.long_holds),
    )
    yield _counter(
        names.LONG_HOLDS_TOTAL,
        "Holds that passed the leak threshold while their owner was alive and using them.",
        labels,
        counters.long_holds,
    )
    yield _counter(
        names.GC_RECLAIMED_TOTAL,
        "Checked-out connections returned to the pool by the garbage collector (never closed).",
        labels,
        counters.gc_reclaimed,
    )
    invalidations = CounterMetricFamily(
        names.INVALIDATIONS_TOTAL,
        "Connections invalidated: hard (closed at once) or soft (replaced at next checkout).",
        labels=[names.POOL_NAME, names.KIND],
    )
    invalidations.add_metric([pool.pool_name, names.INVALIDATION_HARD], counters.invalidations_hard)
    invalidations.add_metric([pool.pool_name, names.INVALIDATION_SOFT], counters.invalidations_soft)
    yield invalidations
    yield _counter(
        names.CHECKOUTS_TOTAL, "Connections checked out of the pool.", labels, counters.checkouts
    )
    yield _counter(
        names.SLOW_QUERIES_TOTAL,
        "Statements that ran longer than the slow-query threshold.",
        labels,
        counters.slow_queries,
    )
    yield _counter(
        names.MULTI_CONNECTION_REQUESTS_TOTAL,
        "Requests that held more than one connection of the pool at once.",
        labels,
        counters.multi_connection_requests,
    )
    yield _gauge(
        names.ACCOUNTING_DRIFT,
        "Checked-out connections the monitor counts minus those the pool counts (0 when exact).",
        labels,
        view.drift,
    )
    yield _counter(
        names.LISTENER_ERRORS_TOTAL,
        "Failures inside the monitor's pool listeners (swallowed, never raised into the app).",
        labels,
        counters.listener_errors,
    )


_SAME_EVERYWHERE = "The same from every app instance: aggregate with max, not sum."
# reserved_connections exists from PostgreSQL 16 on; before, the series is absent, not 0.
RESERVED_CONNECTIONS_SINCE = 160000


def server_families(view: MonitorView) -> Iterator[Metric]:
    """Probe up always; the rest only from a fresh sample, never stale numbers while down.

    The same server facts from every app instance: aggregate them with `max by`, never `sum`.
    """
    health = view.server
    yield GaugeMetricFamily(
        names.SERVER_UP,
        "1 when the monitor's last probe reached PostgreSQL, 0 when it failed or has not run yet.",
        value=1 if health.up is True else 0,
    )
    sample = health.last_sample if health.up is True else None
    if sample is None:
        return
    yield from _app_session_families(sample, app_application_names(view, sample))

    settings = sample.settings
    yield GaugeMetricFamily(
        names.SERVER_MAX_CONNECTIONS,
        "The server's max_connections setting. " + _SAME_EVERYWHERE,
        value=settings.max_connections,
    )
    yield GaugeMetricFamily(
        names.SERVER_SUPERUSER_RESERVED_CONNECTIONS,
        "The server's superuser_reserved_connections setting. " + _SAME_EVERYWHERE,
        value=settings.superuser_reserved_connections,
    )
    if settings.server_version_num >= RESERVED_CONNECTIONS_SINCE:
        yield GaugeMetricFamily(
            names.SERVER_RESERVED_CONNECTIONS,
            "The server's reserved_connections setting (PostgreSQL 16 and later only). "
            + _SAME_EVERYWHERE,
            value=settings.reserved_connections,
        )
    blocked = Counter({sample.database: 0})
    blocked.update(b.datname or sample.database for b in blocked_sessions(sample))
    family = GaugeMetricFamily(
        names.SERVER_BLOCKED_SESSIONS,
        "Sessions of the app's database waiting on a lock held by another session. "
        + _SAME_EVERYWHERE,
        labels=[names.DATNAME],
    )
    for datname, number in sorted(blocked.items()):
        family.add_metric([datname], number)
    yield family
    if view.capacity.used_ratio is not None:
        yield GaugeMetricFamily(
            names.SERVER_CONNECTIONS_USED_RATIO,
            "Client sessions on the whole server over max_connections (0-1). " + _SAME_EVERYWHERE,
            value=view.capacity.used_ratio,
        )
    pool_label = [view.pool.pool_name]
    yield _gauge(
        names.ORPHAN_SESSIONS,
        "Server sessions the pool opened and detached (any worker of the group), still open.",
        pool_label,
        len(view.orphans) + (view.group.orphans_elsewhere if view.group else 0),
    )
    yield _gauge(
        names.PHANTOM_CONNECTIONS,
        "Pool connections whose server backend no longer exists.",
        pool_label,
        len(view.phantoms) + (view.group.phantoms_elsewhere if view.group else 0),
    )
    yield GaugeMetricFamily(
        names.PROBE_HIDDEN_QUERIES,
        "Sessions of the last probe whose query text this role may not read (grant pg_monitor).",
        value=health.hidden_queries,
    )


def app_application_names(view: MonitorView, sample: ServerSample) -> list[str]:
    """The application_name values of the server sessions behind this app's pool connections."""
    pids = {c.pid for c in view.pool.connections if c.pid is not None}
    found = {b.application_name for b in sample.backends if b.pid in pids}
    return sorted(name for name in found if name is not None)


def _app_session_families(sample: ServerSample, application_names: list[str]) -> Iterator[Metric]:
    """This app's sessions (every instance's: they share the application_name) by state."""
    count = GaugeMetricFamily(
        names.SERVER_SESSIONS,
        "Sessions of this app (its application_name, every instance) on its database, by state. "
        + _SAME_EVERYWHERE,
        labels=[names.DATNAME, names.APPLICATION_NAME, names.SERVER_STATE],
    )
    age = GaugeMetricFamily(
        names.SERVER_MAX_TRANSACTION_SECONDS,
        "Seconds the oldest open transaction of this app's sessions has run, by state (0: none). "
        + _SAME_EVERYWHERE,
        labels=[names.DATNAME, names.APPLICATION_NAME, names.SERVER_STATE],
    )
    for application_name in application_names:
        own = dataclasses.replace(
            sample,
            backends=tuple(b for b in sample.backends if b.application_name == application_name),
        )
        for (datname, state), number in sessions_by_state(own).items():
            count.add_metric([datname, application_name, state], number)
        for (datname, state), seconds in max_tx_age_by_state(own).items():
            age.add_metric([datname, application_name, state], seconds)
    yield count
    yield age


def probe_families(health: ServerHealthSnapshot) -> Iterator[Metric]:
    """The probe's own health; kept while the server is down (that is when it matters)."""
    if health.probe_durations_s:
        # A gauge, not a histogram: the snapshot keeps a bounded window of durations, which
        # cannot be turned into the cumulative buckets a Prometheus histogram requires.
        yield GaugeMetricFamily(
            names.PROBE_DURATION_SECONDS,
            "Seconds the most recent server probe took (success or failure).",
            value=health.probe_durations_s[-1],
        )
    yield CounterMetricFamily(
        names.PROBE_ERRORS_TOTAL, "Server probes that failed.", value=health.errors_total
    )
    yield CounterMetricFamily(
        names.PROBE_SKIPPED_TOTAL,
        "Probe ticks skipped because the previous probe was still running.",
        value=health.skipped_total,
    )
    if health.last_success_at is not None:
        yield GaugeMetricFamily(
            names.PROBE_LAST_SUCCESS_TIMESTAMP_SECONDS,
            "Unix time of the last successful server probe.",
            value=health.last_success_at,
        )


def _gauge(name: str, documentation: str, labels: list[str], value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=_POOL)
    family.add_metric(labels, value)
    return family


def _counter(name: str, documentation: str, labels: list[str], value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=_POOL)
    family.add_metric(labels, value)
    return family


def _by_route(
    name: str, documentation: str, pool_name: str, counts: dict[str, int]
) -> CounterMetricFamily:
    """A counter per route; no series before a route's first count (the keys are unknown)."""
    family = CounterMetricFamily(name, documentation, labels=[names.POOL_NAME, names.ROUTE])
    for route, count in sorted(counts.items()):
        family.add_metric([pool_name, route], count)
    return family


def _histogram(
    name: str, documentation: str, labels: list[str], snapshot: HistogramSnapshot
) -> HistogramMetricFamily:
    # The unit OpenTelemetry's exporter declares for "s" (`# UNIT` in OpenMetrics).
    family = HistogramMetricFamily(name, documentation, labels=_POOL, unit="seconds")
    buckets = [
        (_le(bound), float(count))
        for bound, count in zip(snapshot.bounds, snapshot.cumulative_counts, strict=True)
    ]
    family.add_metric(labels, buckets, snapshot.sum)
    return family


def _le(bound: float) -> str:
    """Bucket bound as client_python writes it (`0.005`, `1.0`, `+Inf`)."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))
