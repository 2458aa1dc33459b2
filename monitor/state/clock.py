"""Clocks are injected so the model can be driven by tests without sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]

monotonic: Clock = time.perf_counter
wall: Clock = time.time
