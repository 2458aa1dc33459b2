from __future__ import annotations

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
