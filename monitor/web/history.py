"""A small bounded ring of recent pool gauge samples, one per process, for the dashboard sparklines.

Pure stdlib; filled by the page renders themselves, so nothing runs while nobody is looking.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from monitor.state.clock import Clock, monotonic

DEFAULT_WINDOW_S = 600.0
DEFAULT_MIN_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class GaugeSample:
    """Pool gauges at one instant; `wait_counts` are the wait-time histogram's cumulative counts."""

    at: float  # monotonic seconds
    used: int
    idle: int
    overflow: int
    pending: int
    wait_counts: tuple[int, ...]


class GaugeHistory:
    """Keeps at most one sample per `min_interval_s`, none older than `window_s`; thread-safe."""

    def __init__(
        self,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
        clock: Clock = monotonic,
    ) -> None:
        self.window_s = window_s
        self.min_interval_s = min_interval_s
        self._clock = clock
        # The time bound alone would do; maxlen also caps memory if the clock misbehaves.
        self._samples: deque[GaugeSample] = deque(maxlen=int(window_s / min_interval_s) + 1)
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._clock()

    def record(
        self, *, used: int, idle: int, overflow: int, pending: int, wait_counts: tuple[int, ...]
    ) -> bool:
        """Append a sample unless the previous one is younger than `min_interval_s`."""
        now = self._clock()
        with self._lock:
            if self._samples and now - self._samples[-1].at < self.min_interval_s:
                return False
            self._samples.append(GaugeSample(now, used, idle, overflow, pending, wait_counts))
            self._drop_older_than(now - self.window_s)
            return True

    def samples(self) -> tuple[GaugeSample, ...]:
        """Samples of the window, oldest first."""
        now = self._clock()
        with self._lock:
            self._drop_older_than(now - self.window_s)
            return tuple(self._samples)

    def _drop_older_than(self, cutoff: float) -> None:
        while self._samples and self._samples[0].at < cutoff:
            self._samples.popleft()
