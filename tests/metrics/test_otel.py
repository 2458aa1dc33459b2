"""The pool instruments through the OpenTelemetry SDK: what OTel's own Prometheus exporter renders
for them matches `/metrics`, and an in-memory reader sees the monitor's numbers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricsData,
    NumberDataPoint,
)
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from monitor.metrics import names, otel
from monitor.metrics.collector import MonitorCollector
from monitor.pool_monitor import PoolMonitor
from tests.metrics.conftest import POOL, holding

# Labels OTel's exporter adds to every series (the instrumentation scope) and a family of its
# own (`target_info`, the resource): not part of what a query on the pool series selects.
EXPORTER_ONLY_LABELS = {"otel_scope_name", "otel_scope_version", "otel_scope_schema_url"}
EXPORTER_ONLY_FAMILIES = {"target"}  # target_info, an OpenMetrics info family
OTEL_FAMILIES = {
    names.CONNECTION_COUNT,
    names.CONNECTION_MAX,
    names.CONNECTION_IDLE_MAX,
    names.PENDING_REQUESTS,
    names.TIMEOUTS_TOTAL.removesuffix("_total"),  # OpenMetrics family names drop `_total`
    names.WAIT_TIME_SECONDS,
    names.USE_TIME_SECONDS,
    names.CREATE_TIME_SECONDS,
}

Shape = dict[str, tuple[str, str, frozenset[str]]]  # family -> (type, unit, label names)


def _shape(text: str) -> Shape:
    shape: Shape = {}
    for family in text_string_to_metric_families(text):
        labels = {
            label for sample in family.samples for label in sample.labels if label != "le"
        } - EXPORTER_ONLY_LABELS
        shape[family.name] = (family.type, family.unit, frozenset(labels))
    return shape


@pytest.fixture
def otel_exposition(monitor: PoolMonitor) -> Iterator[str]:
    """The monitor's OTel instruments rendered by opentelemetry-exporter-prometheus."""
    registry = CollectorRegistry(auto_describe=False)
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    try:
        otel.register(provider.get_meter(otel.SCOPE), monitor)
        yield openmetrics_latest(registry).decode()
    finally:
        provider.shutdown()


def test_otel_exporter_renders_the_names_types_units_and_labels_of_metrics(
    monitor: PoolMonitor, otel_exposition: str
) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(lambda: monitor))
    ours = _shape(openmetrics_latest(registry).decode())
    theirs = _shape(otel_exposition)

    assert set(theirs) - EXPORTER_ONLY_FAMILIES == OTEL_FAMILIES
    assert {name: ours[name] for name in OTEL_FAMILIES} == {
        name: theirs[name] for name in OTEL_FAMILIES
    }
    assert ours[names.CONNECTION_COUNT][2] == {names.POOL_NAME, names.STATE}
    assert ours[names.WAIT_TIME_SECONDS][:2] == ("histogram", "seconds")


def test_otel_exporter_buckets_match_metrics(monitor: PoolMonitor, otel_exposition: str) -> None:
    def bounds(text: str, family_name: str) -> list[str]:
        (family,) = (f for f in text_string_to_metric_families(text) if f.name == family_name)
        return [s.labels["le"] for s in family.samples if s.name.endswith("_bucket")]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(lambda: monitor))
    ours = openmetrics_latest(registry).decode()
    for name in (names.WAIT_TIME_SECONDS, names.USE_TIME_SECONDS, names.CREATE_TIME_SECONDS):
        # The exporter writes `1` where client_python writes `1.0`: compare numbers.
        assert [float(b) for b in bounds(ours, name)] == [
            float(b) for b in bounds(otel_exposition, name)
        ]


def _points(data: MetricsData | None, name: str) -> list[Any]:
    assert data is not None
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        if scope.scope.name == otel.SCOPE
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def _value(data: MetricsData | None, name: str, **attributes: str) -> float:
    wanted = {otel.POOL_NAME: POOL, **{k.replace("_", "."): v for k, v in attributes.items()}}
    (point,) = (p for p in _points(data, name) if dict(p.attributes) == wanted)
    assert isinstance(point, NumberDataPoint)
    return point.value


@pytest.mark.pool_monitor_allow(
    reason="holds the whole pool: the timeout counter under test", kinds="pool_timeout"
)
def test_in_memory_reader_sees_the_pool(monitor: PoolMonitor, engine: Engine) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        otel.register(provider.get_meter(otel.SCOPE), monitor)
        first = reader.get_metrics_data()
        assert _value(first, "db.client.connection.max") == 5  # pool_size 3 + max_overflow 2
        assert _value(first, "db.client.connection.idle.max") == 3
        assert _value(first, "db.client.connection.timeouts") == 0
        with holding(engine, 5):
            with pytest.raises(PoolTimeoutError):
                engine.connect()  # waits the pool timeout (1 s), then gives up
            held = reader.get_metrics_data()
            assert (
                _value(held, "db.client.connection.count", db_client_connection_state="used") == 5
            )
            assert _value(held, "db.client.connection.pending_requests") == 0
            assert _value(held, "db.client.connection.timeouts") == 1
        after = reader.get_metrics_data()
        assert _value(after, "db.client.connection.count", db_client_connection_state="used") == 0
    finally:
        provider.shutdown()

    # The histograms: each bucket count and the sum are the monitor's own.
    pool = monitor.pool_snapshot()
    for name, snapshot in (
        (otel.WAIT_TIME, pool.wait_time),
        (otel.USE_TIME, pool.use_time),
        (otel.CREATE_TIME, pool.create_time),
    ):
        (point,) = _points(after, name)
        assert isinstance(point, HistogramDataPoint)
        assert tuple(point.explicit_bounds) == snapshot.bounds[:-1]
        cumulative = [sum(point.bucket_counts[: i + 1]) for i in range(len(point.bucket_counts))]
        assert tuple(cumulative) == snapshot.cumulative_counts, name
        assert point.sum == pytest.approx(snapshot.sum, rel=1e-9, abs=1e-9), name
    (wait,) = _points(after, otel.WAIT_TIME)
    assert wait.count >= 6  # five held checkouts and the one that timed out


@pytest.mark.parametrize(
    ("counts", "total"),
    [([2, 0, 1, 0], 0.7), ([0, 3, 0, 0], 1.2), ([1, 0, 0, 2], 30.0), ([4, 0, 0, 0], 0.0)],
)
def test_replayed_values_keep_buckets_and_sum(counts: list[int], total: float) -> None:
    bounds = (0.1, 0.5, 1.0, float("inf"))
    values = list(otel.replay_values(bounds, counts, total))
    assert len(values) == sum(counts)
    buckets = [0] * len(bounds)
    for value in values:
        buckets[next(i for i, bound in enumerate(bounds) if value <= bound)] += 1
    assert buckets == counts
    if total > 0:
        assert sum(values) == pytest.approx(total)


def test_without_histograms_only_the_cheap_instruments(monitor: PoolMonitor) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        otel.register(provider.get_meter(otel.SCOPE), monitor, histograms=False)
        data = reader.get_metrics_data()
        assert _points(data, otel.WAIT_TIME) == []
        assert _value(data, "db.client.connection.max") == 5
    finally:
        provider.shutdown()
