from __future__ import annotations

import threading

from monitor.state.histogram import Histogram


def test_buckets_are_cumulative_and_fold_batches() -> None:
    histogram = Histogram(buckets=(0.01, 0.1, 1.0))
    for value in [0.005] * 3000 + [0.05, 0.5, 5.0]:  # more than one fold batch
        histogram.observe(value)
    snapshot = histogram.snapshot()
    assert snapshot.cumulative_counts == (3000, 3001, 3002, 3003)
    assert snapshot.count == 3003
    assert abs(snapshot.sum - (15.0 + 5.55)) < 1e-6
    assert snapshot.quantile(0.5) == 0.01
    assert snapshot.quantile(1.0) == float("inf")


def test_empty_quantile_is_none() -> None:
    assert Histogram().snapshot().quantile(0.99) is None


def test_bounds_are_inclusive_upper_limits() -> None:
    # Prometheus' `le`: a sample equal to a bound counts in that bound's bucket.
    histogram = Histogram(buckets=(0.01, 0.1))
    for value in (0.01, 0.1, 0.10000001):
        histogram.observe(value)
    assert histogram.snapshot().cumulative_counts == (1, 2, 3)


def test_samples_appended_while_folding_are_kept() -> None:
    histogram = Histogram(buckets=(1.0,))
    writers = [
        threading.Thread(target=lambda: [histogram.observe(0.5) for _ in range(20_000)])
        for _ in range(4)
    ]
    for writer in writers:
        writer.start()
    while any(writer.is_alive() for writer in writers):
        histogram.snapshot()  # folds concurrently with the appends
    for writer in writers:
        writer.join()
    snapshot = histogram.snapshot()
    assert snapshot.count == 80_000
    assert snapshot.cumulative_counts == (80_000, 80_000)
