"""Bounded session lists: the most telling N server sessions, counts by state for the rest.

A server with thousands of sessions would otherwise make every poll and snapshot carry all of
them (5,000 sessions: a 2 MB snapshot). Counts are always computed from the full sample.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from monitor.state.server import IDLE_IN_TRANSACTION_STATES, Backend
from monitor.state.view import MonitorView

SESSION_LIST_CAP = 50


@dataclass(frozen=True, slots=True)
class CappedSessions:
    """`shown`: at most `cap` sessions, most telling first; the others only counted by state."""

    shown: tuple[Backend, ...]
    total: int
    cap: int
    omitted_by_state: tuple[tuple[str, int], ...]

    @property
    def omitted(self) -> int:
        return self.total - len(self.shown)


def _interest(backend: Backend) -> tuple[int, float]:
    """Blocked first, then idle in transaction, active, the rest; oldest first within each."""
    if backend.blocked_by:
        rank = 0
    elif backend.state in IDLE_IN_TRANSACTION_STATES:
        rank = 1
    elif backend.state == "active":
        rank = 2
    else:
        rank = 3
    age = backend.xact_age_s or backend.state_age_s or backend.backend_age_s or 0.0
    return rank, -age


def cap_sessions(backends: Iterable[Backend], cap: int = SESSION_LIST_CAP) -> CappedSessions:
    every = list(backends)
    if len(every) <= cap:
        return CappedSessions(tuple(every), len(every), cap, ())
    ranked = sorted(every, key=_interest)
    shown, rest = ranked[:cap], ranked[cap:]
    counts = Counter(backend.state or "unknown" for backend in rest)
    return CappedSessions(
        tuple(sorted(shown, key=lambda b: b.pid)), len(every), cap, tuple(counts.most_common())
    )


def describe(capped: CappedSessions) -> dict[str, object]:
    """The cap stated in a snapshot: how many there are, how many are listed, the rest by state."""
    return {
        "cap": capped.cap,
        "total": capped.total,
        "shown": len(capped.shown),
        "omitted_by_state": dict(capped.omitted_by_state),
    }


def capped_view(
    view: MonitorView, cap: int = SESSION_LIST_CAP
) -> tuple[MonitorView, dict[str, object]]:
    """`view` with its server sample's sessions and its orphans capped, and the caps stated."""
    stated: dict[str, object] = {}
    server = view.server
    sample = server.last_sample
    if sample is not None:
        sessions = cap_sessions(sample.backends, cap)
        stated["server_sessions"] = describe(sessions)
        server = dataclasses.replace(
            server, last_sample=dataclasses.replace(sample, backends=sessions.shown)
        )
    orphans = cap_sessions(view.orphans, cap)
    stated["orphans"] = describe(orphans)
    return dataclasses.replace(view, server=server, orphans=orphans.shown), stated
