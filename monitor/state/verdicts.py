"""Rule verdicts over a recent window: a rule fails while its condition held within the window.

Without it one garbage-collected connection would keep a rule failing for the life of the
process. Pure: the clock is injected, and readers get plain `RuleVerdict`s back.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from monitor.state.clock import Clock, wall

DEFAULT_WINDOW_S = 900.0
BAD = ("warn", "fail")


@dataclass(frozen=True, slots=True)
class RuleVerdict:
    """One rule's verdict; `since` and `last_held_at` (unix times) say when its condition held."""

    rule: str
    status: str  # ok, warn, fail, unknown
    why: str
    since: float | None = None  # the condition first held, in the current episode
    last_held_at: float | None = None  # the condition last held (now while it still holds)
    holds_now: bool = False  # False: failing only because it held within the window


class _Episode:
    """A rule's current bad stretch: when it began, when each severity was last seen."""

    __slots__ = ("last_at", "since", "why")

    def __init__(self, since: float) -> None:
        self.since = since
        self.last_at: dict[str, float] = {}  # status -> last time it held
        self.why: dict[str, str] = {}  # status -> the last reason given for it


class VerdictWindow:
    """Turns the verdicts of one instant into verdicts over the last `window_s` seconds.

    A raw verdict may carry its own evidence times (an event that happened between two looks):
    `last_held_at` when the condition last held, `since` when it began; else it holds now.
    """

    def __init__(self, window_s: float = DEFAULT_WINDOW_S, *, clock: Clock = wall) -> None:
        if not window_s > 0:
            raise ValueError(f"the verdict window must be positive, got {window_s!r}")
        self.window_s = float(window_s)
        self._clock = clock
        self._episodes: dict[str, _Episode] = {}
        self._lock = threading.Lock()

    def apply(self, raw: Sequence[RuleVerdict]) -> tuple[RuleVerdict, ...]:
        now = self._clock()
        cutoff = now - self.window_s
        with self._lock:
            return tuple(self._apply_one(verdict, now, cutoff) for verdict in raw)

    def _apply_one(self, raw: RuleVerdict, now: float, cutoff: float) -> RuleVerdict:
        episode = self._episodes.get(raw.rule)
        if raw.status in BAD:
            held_at = raw.last_held_at if raw.last_held_at is not None else now
            began = min(raw.since if raw.since is not None else held_at, held_at)
            if held_at >= cutoff:
                if episode is None or max(episode.last_at.values(), default=0.0) < cutoff:
                    episode = self._episodes[raw.rule] = _Episode(began)
                episode.since = min(episode.since, began)
                if held_at >= episode.last_at.get(raw.status, 0.0):
                    episode.last_at[raw.status] = held_at
                    episode.why[raw.status] = raw.why
        if episode is None:
            # Bad only by evidence older than the window (or never bad): OK.
            return dataclasses.replace(raw, status="ok") if raw.status in BAD else raw
        recent = {status: at for status, at in episode.last_at.items() if at >= cutoff}
        if not recent:
            del self._episodes[raw.rule]  # quiet for a whole window: back to OK by itself
            return dataclasses.replace(raw, status="ok") if raw.status in BAD else raw
        status = "fail" if "fail" in recent else "warn"
        holds_now = raw.status in BAD and raw.last_held_at is None
        why = raw.why if raw.status == status else episode.why[status]
        return RuleVerdict(raw.rule, status, why, episode.since, max(recent.values()), holds_now)
