"""Cumulative histograms filled in batches: the hot path only appends a float to a deque."""

from __future__ import annotations

import bisect
import threading
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from itertools import repeat, starmap

# Bucket bounds in seconds, fitted to what each histogram measures (OpenTelemetry gives no
# bucket advice for db.client.connection.*; its statement-duration advice stops at 10 s). Fixed,
# not derived from settings: instances aggregate only histograms with identical buckets.

# Checkout wait: sub-millisecond when an idle connection is there; otherwise up to the pool
# timeout, 30 s by default in SQLAlchemy's QueuePool (and HikariCP's connectionTimeout), 10 s
# in this app's settings. Bounds past 30 s tell a timed-out wait from a long successful one.
WAIT_TIME_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
)  # fmt: skip

# Checkout to checkin: milliseconds for a request, up to the leak threshold (10 s by default,
# MONITOR_LEAK_THRESHOLD_S) and far past it: a leak held for minutes or an hour must not read as
# the last bound.
USE_TIME_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip

# Opening a connection: sub-millisecond from a pooler such as PgBouncer, about 10 ms over
# loopback to PostgreSQL (measured here: psycopg2 to PostgreSQL 15, median 14 ms, 9-47 ms on a
# busy 2-core machine), tens of ms more across a network or with TLS, seconds when the server
# is overloaded, up to libpq's connect_timeout (2-10 s as usually set; 30 s leaves room).
CREATE_TIME_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

DURATION_BUCKETS_S = USE_TIME_BUCKETS_S  # the default of a Histogram made without buckets

# Pending samples are folded into the buckets once this many accumulate (or at every read).
FOLD_AT = 2048


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """Cumulative counts per upper bound (the last bound is +Inf), plus sum and count."""

    bounds: tuple[float, ...]
    cumulative_counts: tuple[int, ...]
    sum: float
    count: int

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding quantile q (coarse, like Prometheus' estimate)."""
        if self.count == 0:
            return None
        rank = q * self.count
        for bound, cumulative in zip(self.bounds, self.cumulative_counts, strict=True):
            if cumulative >= rank:
                return bound
        return self.bounds[-1]


class Histogram:
    """Thread-safe: `observe` is a deque append; folding into buckets happens under a lock."""

    def __init__(self, buckets: Sequence[float] = DURATION_BUCKETS_S) -> None:
        self._bounds = tuple(sorted(buckets))
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        # Hot paths may append here directly and call `fold()` past FOLD_AT (saves a call).
        self.pending: deque[float] = deque()
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        self.pending.append(value)
        if len(self.pending) > FOLD_AT:
            self.fold()

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            self._fold_locked()
            cumulative: list[int] = []
            running = 0
            for count in self._counts:
                running += count
                cumulative.append(running)
            return HistogramSnapshot(
                bounds=(*self._bounds, float("inf")),
                cumulative_counts=tuple(cumulative),
                sum=self._sum,
                count=running,
            )

    def fold(self) -> None:
        with self._lock:
            self._fold_locked()

    def _fold_locked(self) -> None:
        # Bulk operations in C: take exactly the samples present now (appends may race in, they
        # stay for the next fold), bucket them with bisect, count with Counter.
        pending = self.pending
        values = list(starmap(pending.popleft, repeat((), len(pending))))
        if not values:
            return
        counts = self._counts
        for index, count in Counter(map(partial(bisect.bisect_left, self._bounds), values)).items():
            counts[index] += count
        self._sum += sum(values)
