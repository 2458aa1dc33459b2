"""The pool instruments through the OpenTelemetry metrics API, for an OTel collector (OTLP).

Optional (extra `otel`): the same `db.client.connection.*` instruments as `/metrics`, read from
the monitor's view at each collection, so nothing runs on the hot path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise

from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation

from monitor.sources import ViewSource
from monitor.state.histogram import (
    CREATE_TIME_BUCKETS_S,
    USE_TIME_BUCKETS_S,
    WAIT_TIME_BUCKETS_S,
    HistogramSnapshot,
)
from monitor.state.view import MonitorView

SCOPE = "pool-monitor"
# Attribute names of the current semantic conventions (rendered for Prometheus as names.POOL_NAME
# and names.STATE).
POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
WAIT_TIME = "db.client.connection.wait_time"
USE_TIME = "db.client.connection.use_time"
CREATE_TIME = "db.client.connection.create_time"

# Name, description and the same bucket bounds as `/metrics`.
_HISTOGRAMS = (
    (WAIT_TIME, "Seconds a checkout waited for a connection.", WAIT_TIME_BUCKETS_S),
    (USE_TIME, "Seconds a connection stayed checked out.", USE_TIME_BUCKETS_S),
    (CREATE_TIME, "Seconds taken to open a new connection.", CREATE_TIME_BUCKETS_S),
)
_EPSILON = 1e-9  # a replayed value sits strictly above its bucket's lower bound


@dataclass(slots=True)
class _Replayed:
    """What was already fed to an OTel histogram for one pool: cumulative counts and sum."""

    cumulative_counts: tuple[int, ...]
    sum: float


class PoolInstruments:
    """Observable instruments over one monitor; `register` them on a Meter once."""

    def __init__(
        self, get_monitor: Callable[[], ViewSource | None], *, histograms: bool = True
    ) -> None:
        self._get_monitor = get_monitor
        self._with_histograms = histograms
        self._views: tuple[MonitorView, ...] = ()
        self._histograms: dict[str, Histogram] = {}
        self._replayed: dict[tuple[str, str], _Replayed] = {}

    def register(self, meter: Meter) -> None:
        """Creates the instruments; callbacks run in this order at every collection."""
        # The histograms first: the count callback (the first to run) feeds them.
        for name, description, bounds in _HISTOGRAMS if self._with_histograms else ():
            self._histograms[name] = meter.create_histogram(
                name,
                unit="s",
                description=description,
                explicit_bucket_boundaries_advisory=list(bounds),
            )
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            [self._count],
            unit="{connection}",
            description="Connections of the pool by state: used (checked out) or idle.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.max",
            [self._max],
            unit="{connection}",
            description="Most connections the pool may open (pool_size + max_overflow).",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.idle.max",
            [self._idle_max],
            unit="{connection}",
            description="Most idle connections the pool keeps open (pool_size).",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            [self._pending],
            unit="{request}",
            description="Callers waiting for a connection of the pool right now.",
        )
        meter.create_observable_counter(
            "db.client.connection.timeouts",
            [self._timeouts],
            unit="{timeout}",
            description="Checkouts that gave up after the pool timeout.",
        )

    # ---- callbacks -------------------------------------------------------------------------

    def _count(self, options: CallbackOptions) -> Iterable[Observation]:
        # The first callback of a collection takes the view the others reuse: the SDK runs the
        # callbacks of a collection in registration order, one collection at a time (its lock).
        observations = []
        for view in self._read():
            attributes = {POOL_NAME: view.pool.pool_name}
            observations += [
                Observation(view.pool_stats.checked_out, {**attributes, STATE: "used"}),
                Observation(view.pool_stats.checked_in, {**attributes, STATE: "idle"}),
            ]
        return observations

    def _max(self, options: CallbackOptions) -> Iterable[Observation]:
        # A pool without a maximum (max_overflow=-1, NullPool) reports none, not a false one.
        return self._pool_value(
            lambda view: None if view.pool_stats.unbounded else view.pool_stats.max_connections
        )

    def _idle_max(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._pool_value(lambda view: view.pool_stats.size)

    def _pending(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._pool_value(lambda view: view.pool.pending_requests)

    def _timeouts(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._pool_value(lambda view: view.pool.counters.timeouts)

    def _pool_value(self, value: Callable[[MonitorView], float | None]) -> Iterable[Observation]:
        observations = []
        for view in self._views:
            number = value(view)
            if number is not None:
                observations.append(Observation(number, {POOL_NAME: view.pool.pool_name}))
        return observations

    # ---- reading ---------------------------------------------------------------------------

    def _read(self) -> tuple[MonitorView, ...]:
        """Every pool's view (a monitor may watch several engines), kept for this collection."""
        monitor = self._get_monitor()
        self._views = tuple(monitor.views(detail=False)) if monitor is not None else ()
        for view in self._views if self._with_histograms else ():
            pool = view.pool
            for name, snapshot in (
                (WAIT_TIME, pool.wait_time),
                (USE_TIME, pool.use_time),
                (CREATE_TIME, pool.create_time),
            ):
                self._replay(name, pool.pool_name, snapshot)
        return self._views

    def _replay(self, name: str, pool_name: str, snapshot: HistogramSnapshot) -> None:
        # OpenTelemetry has no observable histogram: the samples new since the last collection
        # are recorded again, bucket by bucket, so every bucket count and the sum are exact.
        # One SDK record per sample (several microseconds each, in the reader's thread): at
        # thousands of checkouts per second, `histograms=False` keeps only the cheap instruments.
        key = (name, pool_name)
        before = self._replayed.get(key)
        if before is None or any(
            now < then
            for now, then in zip(snapshot.cumulative_counts, before.cumulative_counts, strict=False)
        ):
            before = _Replayed((0,) * len(snapshot.cumulative_counts), 0.0)  # new or restarted
        counts = [
            now - then
            for now, then in zip(snapshot.cumulative_counts, before.cumulative_counts, strict=True)
        ]
        new = [counts[0], *(b - a for a, b in pairwise(counts))]
        self._replayed[key] = _Replayed(snapshot.cumulative_counts, snapshot.sum)
        attributes = {POOL_NAME: pool_name}
        histogram = self._histograms[name]
        for value in replay_values(snapshot.bounds, new, snapshot.sum - before.sum):
            histogram.record(value, attributes)


def replay_values(bounds: tuple[float, ...], counts: list[int], total: float) -> Iterator[float]:
    """`counts[i]` values in (bounds[i-1], bounds[i]] whose sum is `total` when it can be.

    Every value sits at the same fraction of its bucket; the +Inf bucket takes what is left.
    """
    lows = (0.0, *bounds[:-1])
    finite = [(low, high, n) for low, high, n in zip(lows, bounds, counts, strict=True) if n]
    overflow = next(((low, n) for low, high, n in finite if math.isinf(high)), None)
    finite = [(low, high, n) for low, high, n in finite if not math.isinf(high)]
    if overflow is not None:
        # Finite buckets at their middle, the rest shared by the values past the last bound.
        low, n = overflow
        rest = total - sum(n_i * (lo + hi) / 2 for lo, hi, n_i in finite)
        for lo, hi, n_i in finite:
            yield from [(lo + hi) / 2] * n_i
        yield from [max(rest / n, low + _EPSILON)] * n
        return
    least = sum(n_i * lo for lo, _, n_i in finite)
    most = sum(n_i * hi for _, hi, n_i in finite)
    share = (total - least) / (most - least) if most > least else 1.0
    share = min(1.0, max(_EPSILON, share))
    for lo, hi, n_i in finite:
        yield from [lo + share * (hi - lo)] * n_i


def register(meter: Meter, monitor: ViewSource, *, histograms: bool = True) -> PoolInstruments:
    """The pool instruments of `monitor` on `meter` (`meter_provider.get_meter(SCOPE)`)."""
    instruments = PoolInstruments(lambda: monitor, histograms=histograms)
    instruments.register(meter)
    return instruments
