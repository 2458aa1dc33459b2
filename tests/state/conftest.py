from __future__ import annotations

import pytest

from monitor.state.tracker import PoolTracker


class FakeClock:
    """Monotonic and wall time that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tracker(clock: FakeClock) -> PoolTracker:
    return PoolTracker(
        "test",
        leak_threshold_s=5.0,
        slow_query_s=0.1,
        clock=clock,
        wall_clock=lambda: clock.now + 1e9,
    )
