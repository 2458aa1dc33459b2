"""The collector against a running app on real PostgreSQL: known situations, known numbers."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import Engine, text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from monitor.metrics import names
from monitor.metrics.collector import MonitorCollector
from monitor.pool_monitor import PoolMonitor
from monitor.settings import Settings
from monitor.state.records import LeakClass
from monitor.state.server import ACTIVITY_STATES
from monitor.state.view import MonitorView, build_view
from tests.metrics.conftest import OUTSIDE_APPLICATION, POOL_LABELS, holding, wait_for

Sample = Callable[..., float | None]
IDLE_IN_TX = "idle in transaction"


class _Replaced:
    """The app's monitor with its view passed through `change` (for states PostgreSQL won't enter)."""

    def __init__(
        self, monitor: PoolMonitor, change: Callable[[MonitorView], MonitorView], *, probe: bool
    ) -> None:
        self._monitor = monitor
        self._change = change
        self.probe_enabled = probe

    def view(self, *, detail: bool = True) -> MonitorView:
        return self._change(self._monitor.view(detail=detail))


def _registry_of(source: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(lambda: source))
    return registry


def test_nothing_is_exposed_before_the_monitor_exists() -> None:
    registry = _registry_of(None)
    assert list(registry.collect()) == []
    assert generate_latest(registry) == b""


def test_used_and_idle_follow_held_connections(engine: Engine, sample: Sample) -> None:
    pool: Any = engine.pool
    checkouts_before = sample(names.CHECKOUTS_TOTAL, **POOL_LABELS)
    assert checkouts_before is not None
    with holding(engine, 2):
        assert sample(names.CONNECTION_COUNT, **POOL_LABELS, **{names.STATE: "used"}) == 2
        assert (
            sample(names.CONNECTION_COUNT, **POOL_LABELS, **{names.STATE: "idle"})
            == pool.checkedin()
        )
        assert sample(names.POOL_OVERFLOW, **POOL_LABELS) == 0
    assert sample(names.CONNECTION_COUNT, **POOL_LABELS, **{names.STATE: "used"}) == 0
    idle = sample(names.CONNECTION_COUNT, **POOL_LABELS, **{names.STATE: "idle"})
    assert idle is not None and idle >= 2  # both came back to the pool
    assert sample(names.CHECKOUTS_TOTAL, **POOL_LABELS) == checkouts_before + 2
    assert sample(names.CONNECTION_MAX, **POOL_LABELS) == 5  # pool_size 3 + max_overflow 2
    assert sample(names.CONNECTION_IDLE_MAX, **POOL_LABELS) == 3
    assert sample(names.ACCOUNTING_DRIFT, **POOL_LABELS) == 0


def test_overflow_counts_connections_beyond_pool_size(engine: Engine, sample: Sample) -> None:
    with holding(engine, 5):
        assert sample(names.CONNECTION_COUNT, **POOL_LABELS, **{names.STATE: "used"}) == 5
        assert sample(names.POOL_OVERFLOW, **POOL_LABELS) == 2


def test_the_apps_idle_in_transaction_session_shows_and_outside_ones_do_not(
    outside_session: Any,
    engine: Engine,
    sample: Sample,
    monitor: PoolMonitor,
    app_settings: Settings,
) -> None:
    datname = monitor.engine.url.database
    assert datname
    app_name = app_settings.application_name  # what the app's engine connects with

    def idle_in_tx() -> tuple[float | None, float | None]:
        labels = {"datname": datname, "application_name": app_name, "state": IDLE_IN_TX}
        return (
            sample(names.SERVER_SESSIONS, **labels),
            sample(names.SERVER_MAX_TRANSACTION_SECONDS, **labels),
        )

    with holding(engine, 1, in_transaction=True):
        # The transaction stays open, so its age keeps growing past 0.5 s.
        count, age = wait_for(idle_in_tx, lambda v: (v[0] or 0) >= 1 and (v[1] or 0) >= 0.5)
        assert count == 1
        assert age is not None and 0.5 <= age < 120
    assert sample(names.SERVER_UP) == 1
    # Every state of the app's sessions is present, 0 when empty; the outside session (its
    # own application_name) is postgres_exporter's business, not this app's series.
    for state in ACTIVITY_STATES:
        labels = {"datname": datname, "application_name": app_name, "state": state}
        assert sample(names.SERVER_SESSIONS, **labels) is not None, state
        assert sample(names.SERVER_MAX_TRANSACTION_SECONDS, **labels) is not None, state
        outside = {**labels, "application_name": OUTSIDE_APPLICATION}
        assert sample(names.SERVER_SESSIONS, **outside) is None


def test_server_limits_are_the_servers_and_reserved_absent_before_16(
    monitor: PoolMonitor, sample: Sample, wait_probed: Callable[[], None]
) -> None:
    wait_probed()
    with monitor.engine.connect() as connection:
        settings = dict(
            connection.exec_driver_sql(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('max_connections', 'superuser_reserved_connections', 'reserved_connections',"
                " 'server_version_num')"
            ).all()
        )
    assert sample(names.SERVER_MAX_CONNECTIONS) == int(settings["max_connections"])
    assert sample(names.SERVER_SUPERUSER_RESERVED_CONNECTIONS) == int(
        settings["superuser_reserved_connections"]
    )
    reserved = sample(names.SERVER_RESERVED_CONNECTIONS)
    if int(settings["server_version_num"]) >= 160000:
        assert reserved == int(settings["reserved_connections"])
    else:
        assert "reserved_connections" not in settings and reserved is None
    ratio = sample(names.SERVER_CONNECTIONS_USED_RATIO)
    assert ratio is not None and 0 < ratio <= 1


def test_used_ratio_stays_within_one_when_superusers_fill_the_reserved_slots(
    monitor: PoolMonitor, wait_probed: Callable[[], None]
) -> None:
    wait_probed()

    def full(view: MonitorView) -> MonitorView:
        # The case: 19 client sessions on a 20-connection server, 3 slots reserved.
        sample = view.server.last_sample
        assert sample is not None
        crowded = dataclasses.replace(
            sample,
            total_client_sessions=19,
            settings=dataclasses.replace(
                sample.settings, max_connections=20, superuser_reserved_connections=3
            ),
        )
        server = dataclasses.replace(view.server, last_sample=crowded)
        return build_view(view.pool, view.pool_stats, server, view.app)

    registry = _registry_of(_Replaced(monitor, full, probe=True))
    assert registry.get_sample_value(names.SERVER_CONNECTIONS_USED_RATIO) == 19 / 20


def test_a_leak_past_the_threshold_is_exposed_by_class(engine: Engine, sample: Sample) -> None:
    def leaked(leak_class: LeakClass) -> float | None:
        return sample(names.LEAKED_CONNECTIONS, **POOL_LABELS, **{"class": leak_class.value})

    assert [leaked(c) for c in LeakClass] == [0] * len(LeakClass)
    with holding(engine, 1, in_transaction=True):
        # Threshold 1 s; the sweep after each probe classifies it from pg_stat_activity.
        wait_for(lambda: leaked(LeakClass.IDLE_IN_TRANSACTION), lambda v: v == 1)
        assert sum(leaked(c) or 0 for c in LeakClass) == 1
        total = sample(names.LEAKS_TOTAL, **POOL_LABELS, **{"class": "idle_in_transaction"})
        assert total is not None and total >= 1
    assert [leaked(c) for c in LeakClass] == [0] * len(LeakClass)
    assert sum(
        sample(names.LEAKS_TOTAL, **POOL_LABELS, **{"class": c.value}) or 0 for c in LeakClass
    ) == 1  # fmt: skip


@pytest.mark.pool_monitor_allow(
    reason="holds the whole pool: the timeout counter under test", kinds="pool_timeout"
)
def test_pool_timeout_counts_and_pending_request_shows(engine: Engine, sample: Sample) -> None:
    assert sample(names.TIMEOUTS_TOTAL, **POOL_LABELS) == 0
    waits_before = sample(names.WAIT_TIME_SECONDS + "_count", **POOL_LABELS) or 0
    failures: list[BaseException] = []

    def wait_for_a_connection() -> None:
        try:
            engine.connect().close()
        except PoolTimeoutError as exc:
            failures.append(exc)

    with holding(engine, 5):
        waiter = threading.Thread(target=wait_for_a_connection)
        waiter.start()
        # The pool timeout is 1 s: the waiter is visible for about that long.
        wait_for(
            lambda: sample(names.PENDING_REQUESTS, **POOL_LABELS), lambda v: v == 1, timeout_s=0.9
        )
        waiter.join(timeout=10)
        assert not waiter.is_alive()
    assert len(failures) == 1
    assert sample(names.TIMEOUTS_TOTAL, **POOL_LABELS) == 1
    assert sample(names.PENDING_REQUESTS, **POOL_LABELS) == 0
    # Every checkout is a wait: five held ones, then the one that timed out.
    assert sample(names.WAIT_TIME_SECONDS + "_count", **POOL_LABELS) == waits_before + 6
    # The timed-out wait (about 1 s) lands above the 0.5 s bucket.
    bucket = names.WAIT_TIME_SECONDS + "_bucket"
    within_half = sample(bucket, **POOL_LABELS, le="0.5") or 0
    assert (sample(bucket, **POOL_LABELS, le="+Inf") or 0) - within_half >= 1


def test_histograms_are_cumulative_and_end_at_inf(registry: CollectorRegistry) -> None:
    families = {f.name: f for f in registry.collect()}
    for name in (names.WAIT_TIME_SECONDS, names.USE_TIME_SECONDS, names.CREATE_TIME_SECONDS):
        family = families[name]
        assert family.type == "histogram"
        buckets = [s for s in family.samples if s.name == name + "_bucket"]
        counts = [s.value for s in buckets]
        assert counts == sorted(counts), name
        assert buckets[-1].labels["le"] == "+Inf"
        (count,) = (s.value for s in family.samples if s.name == name + "_count")
        assert count == counts[-1] >= 1, name  # the app opened and used a connection at startup


def test_down_server_exposes_up_0_and_probe_metrics_not_stale_sessions(
    monitor: PoolMonitor, wait_probed: Callable[[], None]
) -> None:
    wait_probed()  # a real sample exists: the collector must still refuse to show it

    def down(view: MonitorView) -> MonitorView:
        server = dataclasses.replace(view.server, up=False, errors_total=3)
        return dataclasses.replace(view, server=server)

    registry = _registry_of(_Replaced(monitor, down, probe=True))
    exposed = {f.name for f in registry.collect()}
    assert registry.get_sample_value(names.SERVER_UP) == 0
    assert registry.get_sample_value(names.PROBE_ERRORS_TOTAL) == 3
    assert registry.get_sample_value(names.PROBE_LAST_SUCCESS_TIMESTAMP_SECONDS) is not None
    assert registry.get_sample_value(names.PROBE_DURATION_SECONDS) is not None
    stale = {
        names.SERVER_SESSIONS,
        names.SERVER_MAX_TRANSACTION_SECONDS,
        names.SERVER_MAX_CONNECTIONS,
        names.SERVER_BLOCKED_SESSIONS,
        names.SERVER_CONNECTIONS_USED_RATIO,
        names.ORPHAN_SESSIONS,
        names.PHANTOM_CONNECTIONS,
        names.PROBE_HIDDEN_QUERIES,
    }
    assert exposed & stale == set()
    assert names.CONNECTION_COUNT in exposed  # the pool side does not depend on the server


def test_before_the_first_probe_up_is_0_and_no_success_time(monitor: PoolMonitor) -> None:
    def not_probed(view: MonitorView) -> MonitorView:
        server = dataclasses.replace(
            view.server, up=None, last_sample=None, last_success_at=None, probe_durations_s=()
        )
        return dataclasses.replace(view, server=server)

    registry = _registry_of(_Replaced(monitor, not_probed, probe=True))
    assert registry.get_sample_value(names.SERVER_UP) == 0
    exposed = {f.name for f in registry.collect()}
    assert names.PROBE_LAST_SUCCESS_TIMESTAMP_SECONDS not in exposed
    assert names.PROBE_DURATION_SECONDS not in exposed


def test_without_a_probe_no_server_series_at_all(monitor: PoolMonitor) -> None:
    registry = _registry_of(_Replaced(monitor, lambda view: view, probe=False))
    exposed = {f.name for f in registry.collect()}
    assert names.CONNECTION_COUNT in exposed
    assert names.SERVER_UP not in exposed and names.PROBE_ERRORS_TOTAL not in exposed


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_invalidations_by_kind(engine: Engine, sample: Sample, kind: str) -> None:
    before = sample(names.INVALIDATIONS_TOTAL, **POOL_LABELS, kind=kind)
    assert before == 0
    with engine.connect() as connection:
        connection.connection.invalidate(soft=kind == "soft")
    assert sample(names.INVALIDATIONS_TOTAL, **POOL_LABELS, kind=kind) == 1


def test_buckets_reach_past_the_limits_they_measure(
    registry: CollectorRegistry, monitor: PoolMonitor
) -> None:
    def bounds(name: str) -> list[float]:
        (family,) = (f for f in registry.collect() if f.name == name)
        return [float(s.labels["le"]) for s in family.samples if s.name == name + "_bucket"]

    pool_timeout_s = monitor.pool_stats().timeout_s
    assert pool_timeout_s is not None
    wait = bounds(names.WAIT_TIME_SECONDS)
    # A timed-out wait (the app's timeout, SQLAlchemy's default 30 s) is told from a long one.
    assert any(pool_timeout_s < b < math.inf for b in wait) and max(wait[:-1]) > 30
    assert min(wait) < 0.001  # an idle connection is handed out in well under a millisecond
    use = bounds(names.USE_TIME_SECONDS)
    leak_threshold_s = monitor.tracker.snapshot(None, detail=False).leak_threshold_s
    assert any(leak_threshold_s < b < math.inf for b in use)
    assert max(use[:-1]) >= 600  # a connection leaked for minutes is not read as the last bound
    create = bounds(names.CREATE_TIME_SECONDS)
    assert min(create) < 0.001 and max(create[:-1]) >= 5


def test_a_long_hold_that_keeps_working_is_exposed_apart_from_leaks(
    engine: Engine, sample: Sample
) -> None:
    assert sample(names.LONG_HOLDS, **POOL_LABELS) == 0
    with holding(engine, 1) as (connection,):
        # Threshold 1 s: a statement every 0.2 s keeps it a long hold, never a leak.
        def working_long_hold() -> float | None:
            connection.execute(text("SELECT 1"))
            time.sleep(0.2)
            return sample(names.LONG_HOLDS, **POOL_LABELS)

        wait_for(working_long_hold, lambda v: v == 1)
        total = sample(names.LONG_HOLDS_TOTAL, **POOL_LABELS)
        assert total is not None and total >= 1
        assert sum(
            sample(names.LEAKED_CONNECTIONS, **POOL_LABELS, **{"class": c.value}) or 0
            for c in LeakClass
        ) == 0  # fmt: skip
    assert sample(names.LONG_HOLDS, **POOL_LABELS) == 0
