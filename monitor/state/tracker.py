"""The pool tracker: every connection of one pool, who holds it, leaks, timeouts and slow queries.

Hot-path methods (`checkout`, `checkin`, `reset`) do only attribute writes and deque appends;
each slot is touched by one thread at a time because the pool hands it to one holder. A checkout
is one tuple (`Holding`) set on the slot and cleared by the checkin: whether a slot is checked
out, since when and by whom is read from that one attribute. Everything else (sweeps, snapshots,
rare events) takes the lock.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any

from monitor.state.clock import Clock, monotonic, wall
from monitor.state.histogram import (
    CREATE_TIME_BUCKETS_S,
    FOLD_AT,
    USE_TIME_BUCKETS_S,
    WAIT_TIME_BUCKETS_S,
    Histogram,
)
from monitor.state.holders import Holder, RequestScope, describe
from monitor.state.records import (
    ConnectionView,
    GcReclaim,
    LeakClass,
    LeakRecord,
    LifecycleEvent,
    MultiConnectionRequest,
    PoolCounters,
    PoolSnapshot,
    PoolTimeoutRecord,
    SlowQueryGroup,
)
from monitor.state.sites import RawSite, format_site

log = logging.getLogger("monitor.leaks")

_HISTORY_PER_SLOT = 24

# One checkout while it lasts: (checked_out_at, request, task, site). `task` is the asyncio task
# or the thread's ident when no request holds it (named only when shown).
Holding = tuple[float, RequestScope | None, object, RawSite]

# A slot's lifecycle event: (monotonic time, kind, note).
HistoryEntry = tuple[float, str, str]


class Slot:
    """One pool slot (a SQLAlchemy connection record), stable across reconnects."""

    __slots__ = ("checkouts", "connected_at", "cycles", "history", "holding", "id", "leak", "pid")

    def __init__(self, slot_id: int, connected_at: float) -> None:
        self.id = slot_id
        self.pid: int | None = None
        self.connected_at = connected_at
        self.holding: Holding | None = None  # set while checked out
        self.checkouts = 0
        self.leak: _Leak | None = None
        self.history: deque[HistoryEntry] = deque(maxlen=_HISTORY_PER_SLOT)
        # Ended checkouts as complex(checked_out_at, checked_in_at): two floats in one object
        # that the garbage collector does not track (a tuple per checkin, kept here and until
        # the next fold, doubled the objects it had to look at in a busy app).
        self.cycles: deque[complex] = deque(maxlen=_HISTORY_PER_SLOT)


class _Leak:
    """A suspected leak of one checkout: stale once the slot's holding is another one."""

    __slots__ = ("detected_at", "holder", "holding", "leak_class")

    def __init__(
        self, detected_at: float, holder: Holder, holding: Holding, leak_class: LeakClass
    ) -> None:
        self.detected_at = detected_at
        self.holder = holder
        self.holding = holding
        self.leak_class = leak_class


class PoolTracker:
    """Thread-safe model of one pool; readers get immutable `PoolSnapshot`s."""

    def __init__(
        self,
        pool_name: str,
        *,
        leak_threshold_s: float,
        slow_query_s: float,
        clock: Clock = monotonic,
        wall_clock: Clock = wall,
        max_records: int = 200,
        max_slow_queries: int = 500,
        waiters: Callable[[], int] = lambda: 0,
    ) -> None:
        self.pool_name = pool_name
        self.leak_threshold_s = leak_threshold_s
        self.slow_query_s = slow_query_s
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._max_slow_queries = max_slow_queries

        self._open: dict[int, Slot] = {}  # slots with a live DBAPI connection
        # Slots whose connection closed (invalidated) while checked out: still held until the
        # checkin, which does not look here; readers drop the returned ones.
        self._closed_held: dict[int, Slot] = {}
        # Callers waiting for a connection right now, read from the pool when asked: counting
        # them on the way in and out would cost every checkout two list operations.
        self._waiters = waiters

        self.wait_time = Histogram(WAIT_TIME_BUCKETS_S)
        self.use_time = Histogram(USE_TIME_BUCKETS_S)
        # The hot path appends plain floats here (Histogram.observe inlined); the checkin folds.
        self._wait_samples = self.wait_time.pending
        self._use_samples = self.use_time.pending
        self.create_time = Histogram(CREATE_TIME_BUCKETS_S)

        self._resolved: deque[LeakRecord] = deque(maxlen=max_records)
        self._gc_reclaims: deque[GcReclaim] = deque(maxlen=max_records)
        self._timeouts: deque[PoolTimeoutRecord] = deque(maxlen=20)
        self._multi: deque[MultiConnectionRequest] = deque(maxlen=max_records)
        self._events: deque[LifecycleEvent] = deque(maxlen=max_records)
        self._slow: OrderedDict[str, list[Any]] = OrderedDict()

        self._retired_checkouts = 0
        self._count: dict[str, int] = dict.fromkeys(
            (
                "connects",
                "invalidations_hard",
                "invalidations_soft",
                "closes",
                "detaches",
                "gc_reclaimed",
                "timeouts",
                "slow_queries",
                "statement_errors",
                "multi_connection_requests",
                "listener_errors",
            ),
            0,
        )
        self._leaks_by_class: dict[str, int] = {leak_class.value: 0 for leak_class in LeakClass}

    # ---- lifecycle (rare: under the lock) -------------------------------------------------

    @property
    def clock(self) -> Clock:
        return self._clock

    def new_slot(self) -> Slot:
        return Slot(next(self._ids), self._clock())

    def connected(self, slot: Slot, pid: int | None, create_s: float | None) -> None:
        now = self._clock()
        with self._lock:
            slot.pid = pid
            slot.connected_at = now
            self._open[slot.id] = slot
            self._count["connects"] += 1
            slot.history.append((now, "connect", f"pid {pid}" if pid else ""))
        if create_s is not None:
            self.create_time.observe(create_s)

    def closed(self, slot: Slot) -> None:
        now = self._clock()
        with self._lock:
            self._count["closes"] += 1
            if slot.holding is not None:
                self._forget_returned_closed()  # the dict stays as small as the pool
                self._closed_held[slot.id] = slot
            if self._open.pop(slot.id, None) is not None:
                # Keep checkouts_total monotonic when the slot leaves the books.
                self._retired_checkouts += slot.checkouts
                slot.checkouts = 0
            slot.history.append((now, "close", ""))
            slot.pid = None

    def invalidated(self, slot: Slot, *, soft: bool, reason: str) -> None:
        kind = "soft_invalidate" if soft else "invalidate"
        now = self._clock()
        with self._lock:
            self._count["invalidations_soft" if soft else "invalidations_hard"] += 1
            slot.history.append((now, kind, reason))
            self._events.appendleft(
                LifecycleEvent(self._to_wall(now), kind, f"slot {slot.id}: {reason}")
            )

    def detached(self, slot: Slot, *, reclaimed: bool = False) -> None:
        """The connection left the pool for good: no checkin will come for it."""
        now = self._clock()
        with self._lock:
            self._count["detaches"] += 1
            self._release(slot, now, "gc_reclaimed" if reclaimed else "detached")
            if self._open.pop(slot.id, None) is not None:
                self._retired_checkouts += slot.checkouts
                slot.checkouts = 0
            slot.history.append((now, "detach", ""))

    # ---- hot path ---------------------------------------------------------------------------

    def checkout(
        self,
        slot: Slot,
        request: RequestScope | None,
        task: object,
        site: RawSite,
        waited_s: float | None = None,
        at: float | None = None,
    ) -> None:
        """`task`: the asyncio task, or the thread's ident (named only when shown);
        `waited_s`: how long the caller waited for the pool, when the acquire wrapper timed it;
        `at`: when, on this tracker's clock, if the caller read it already (one call saved)."""
        slot.holding = (self._clock() if at is None else at, request, task, site)
        slot.checkouts += 1
        if waited_s is not None:
            # Histogram.observe inlined (this runs on every checkout); the checkin folds.
            self._wait_samples.append(waited_s)
        if request is not None:
            request.connections_held += 1
            if request.connections_held > 1:
                self._flag_multi_connection(request)

    def checkin(self, slot: Slot, reclaimed: bool = False) -> None:
        """`reclaimed`: the garbage collector returned it (the checkout's proxy is gone)."""
        holding = slot.holding
        if holding is None:
            return  # not ours (checked out before the monitor attached) or already released
        slot.holding = None
        checked_out_at = holding[0]
        checked_in_at = self._clock()
        use_samples = self._use_samples
        use_samples.append(checked_in_at - checked_out_at)
        request = holding[1]
        if request is not None:
            request.connections_held -= 1
        if reclaimed:
            with self._lock:  # rare: spelled out in the history, with its note
                slot.history.append((checked_out_at, "checkout", ""))
                slot.history.append((checked_in_at, "checkin", "gc"))
                self._finish(slot, holding, checked_in_at, "gc_reclaimed")
        else:
            slot.cycles.append(complex(checked_out_at, checked_in_at))
            if slot.leak is not None:
                with self._lock:
                    self._finish(slot, holding, checked_in_at, "returned")
        if len(use_samples) > FOLD_AT:
            self.fold_samples()

    def fold_samples(self) -> None:
        """Fold the use and wait samples into their buckets (one of each per checkout, so
        folding both here bounds both)."""
        self.use_time.fold()
        self.wait_time.fold()

    def reset(self, slot: Slot, *, terminated: bool) -> None:
        slot.history.append((self._clock(), "reset", "terminated" if terminated else "rollback"))

    def wait_failed(
        self,
        waited_s: float,
        *,
        timed_out: bool,
        request: RequestScope | None = None,
        site: RawSite = (),
    ) -> None:
        """A caller waited and got no connection (pool timeout, or the connect failed);
        `request` and `site`: who waited and where it asked."""
        self.wait_time.observe(waited_s)
        if timed_out:
            self._record_timeout(waited_s, describe(request, threading.get_ident()), site)

    # ---- statements --------------------------------------------------------------------------

    def slow_query(
        self,
        fingerprint: str,
        statement: str,
        duration_s: float,
        route: str | None,
        site: RawSite = (),
    ) -> None:
        now = self._wall()
        with self._lock:
            self._count["slow_queries"] += 1
            group = self._slow.get(fingerprint)
            if group is None:
                if len(self._slow) >= self._max_slow_queries:
                    self._slow.popitem(last=False)  # forget the least recently seen group
                group = self._slow[fingerprint] = [statement, 0, 0.0, 0.0, now, route, site]
            else:
                self._slow.move_to_end(fingerprint)
            group[1] += 1
            group[2] += duration_s
            group[3] = max(group[3], duration_s)
            group[4] = now
            group[5] = route
            group[6] = site

    def statement_error(self) -> None:
        with self._lock:
            self._count["statement_errors"] += 1

    def listener_error(self) -> None:
        with self._lock:
            self._count["listener_errors"] += 1

    # ---- leaks -------------------------------------------------------------------------------

    def sweep(self, server_states: Mapping[int, str | None] | None = None) -> list[LeakRecord]:
        """Flag connections held past the threshold; log each new suspect once. Returns them."""
        now = self._clock()
        found: list[LeakRecord] = []
        with self._lock:
            for slot, holding in self._held():
                if now - holding[0] < self.leak_threshold_s:
                    continue
                leak_class = classify(
                    server_states.get(slot.pid) if server_states and slot.pid else None
                )
                leak = slot.leak
                if leak is not None and leak.holding is holding:
                    if leak_class is not LeakClass.UNKNOWN:
                        leak.leak_class = leak_class
                    continue
                holder = describe(holding[1], holding[2])
                leak = slot.leak = _Leak(now, holder, holding, leak_class)
                if slot.holding is not holding:
                    slot.leak = None  # checked in meanwhile (checkin does not take the lock)
                    continue
                self._leaks_by_class[leak_class.value] += 1
                record = self._leak_record(slot, leak, now)
                found.append(record)
                where = record.site[0] if record.site else "unknown site"
                log.warning(
                    "connection leak suspected: slot %d (pid %s) held %.1f s by %s (%s), taken at %s",
                    slot.id, slot.pid, record.held_for_s, holder.route, leak_class.value, where,
                )  # fmt: skip
        return found

    # ---- readers -----------------------------------------------------------------------------

    def snapshot(
        self, server_states: Mapping[int, str | None] | None = None, *, detail: bool = True
    ) -> PoolSnapshot:
        """Everything, or with `detail=False` no per-slot history, sites or record lists (what a
        Prometheus scrape needs: counts and classes only, several times cheaper)."""
        now = self._clock()
        self.fold_samples()
        with self._lock:
            held = self._held()
            connections = tuple(
                self._view(slot, now, server_states, detail)
                for slot in sorted(self._open.values(), key=lambda s: s.id)
            )
            # Checked-out slots whose connection was closed under them (invalidated) still count.
            extra = tuple(
                self._view(slot, now, server_states, detail)
                for slot, _ in held
                if slot.id not in self._open
            )
            leaks = tuple(
                self._leak_record(slot, slot.leak, now, detail)
                for slot, holding in held
                if slot.leak is not None and slot.leak.holding is holding
            )
            counters = PoolCounters(
                checkouts=self._retired_checkouts + sum(s.checkouts for s in self._open.values()),
                leaks_by_class=dict(self._leaks_by_class),
                **self._count,
            )
            slow = tuple(
                SlowQueryGroup(
                    fp, g[0], g[1], g[2], g[3], g[4], g[5], format_site(g[6]) if detail else ()
                )
                for fp, g in self._slow.items()
            )
            return PoolSnapshot(
                pool_name=self.pool_name,
                taken_at=self._wall(),
                leak_threshold_s=self.leak_threshold_s,
                slow_query_s=self.slow_query_s,
                connections=connections + extra,
                checked_out=len(held),
                pending_requests=self._waiters(),
                counters=counters,
                wait_time=self.wait_time.snapshot(),
                use_time=self.use_time.snapshot(),
                create_time=self.create_time.snapshot(),
                leaks=leaks,
                resolved_leaks=tuple(self._resolved) if detail else (),
                gc_reclaims=tuple(self._gc_reclaims) if detail else (),
                timeouts=tuple(self._timeouts) if detail else (),
                slow_queries=tuple(sorted(slow, key=lambda g: g.total_s, reverse=True)),
                multi_connection_requests=tuple(self._multi) if detail else (),
                events=tuple(self._events) if detail else (),
            )

    @property
    def checked_out(self) -> int:
        with self._lock:
            return len(self._held())

    # ---- internals ---------------------------------------------------------------------------

    def _held(self) -> list[tuple[Slot, Holding]]:
        """Checked-out slots and their holdings, oldest checkout first (under the lock)."""
        self._forget_returned_closed()
        held = []
        # A slot closed while held and connected again sits in both dicts: merged, it is once.
        for slot in {**self._closed_held, **self._open}.values():
            holding = slot.holding  # read once: a checkin may clear it meanwhile
            if holding is not None:
                held.append((slot, holding))
        return sorted(held, key=lambda pair: pair[1][0])

    def _forget_returned_closed(self) -> None:
        for slot_id, slot in list(self._closed_held.items()):
            if slot.holding is None:
                del self._closed_held[slot_id]

    def _to_wall(self, monotonic_at: float) -> float:
        return self._wall() - (self._clock() - monotonic_at)

    def _view(
        self,
        slot: Slot,
        now: float,
        server_states: Mapping[int, str | None] | None,
        detail: bool = True,
    ) -> ConnectionView:
        holding = slot.holding
        checked_out_at = None if holding is None else holding[0]
        leak_class = None
        if slot.leak is not None and slot.leak.holding is holding:
            leak_class = slot.leak.leak_class
            if server_states is not None and slot.pid is not None and slot.pid in server_states:
                leak_class = classify(server_states[slot.pid])
        return ConnectionView(
            slot_id=slot.id,
            pid=slot.pid,
            connected_at=self._to_wall(slot.connected_at),
            checked_out=checked_out_at is not None,
            checked_out_at=None if checked_out_at is None else self._to_wall(checked_out_at),
            held_for_s=None if checked_out_at is None else now - checked_out_at,
            holder=None if holding is None else describe(holding[1], holding[2]),
            site=format_site(holding[3]) if holding is not None and detail else (),
            checkouts=slot.checkouts,
            leak_class=leak_class,
            history=self._history(slot, holding) if detail else (),
        )

    def _history(self, slot: Slot, holding: Holding | None) -> tuple[LifecycleEvent, ...]:
        """The slot's last events in time order, checkout cycles spelled out as two events."""
        events = list(slot.history)
        for cycle in list(slot.cycles):
            events.append((cycle.real, "checkout", ""))
            events.append((cycle.imag, "checkin", ""))
        if holding is not None:
            events.append((holding[0], "checkout", ""))
        events.sort(key=lambda event: event[0])
        return tuple(
            LifecycleEvent(self._to_wall(at), kind, note)
            for at, kind, note in events[-_HISTORY_PER_SLOT:]
        )

    def _leak_record(self, slot: Slot, leak: _Leak, now: float, detail: bool = True) -> LeakRecord:
        return LeakRecord(
            slot_id=slot.id,
            pid=slot.pid,
            holder=leak.holder,
            site=format_site(leak.holding[3]) if detail else (),
            leak_class=leak.leak_class,
            detected_at=self._to_wall(leak.detected_at),
            held_for_s=now - leak.holding[0],
        )

    def _finish(self, slot: Slot, holding: Holding, now: float, how: str) -> None:
        """A checkout came back (or went away): close its leak, count a GC reclaim."""
        held = now - holding[0]
        site = holding[3]
        if how == "gc_reclaimed":
            holder = describe(holding[1], holding[2])
            self._count["gc_reclaimed"] += 1
            self._gc_reclaims.appendleft(
                GcReclaim(self._to_wall(now), slot.id, holder, format_site(site), held)
            )
            where = format_site(site[:1])
            log.warning(
                "connection reclaimed by the garbage collector: slot %d held %.1f s by %s, "
                "taken at %s (close your sessions)",
                slot.id, held, holder.route, where[0] if where else "unknown site",
            )  # fmt: skip
        leak = slot.leak
        if leak is not None:
            slot.leak = None
            if leak.holding is not holding:
                return  # left by a sweep that raced an earlier checkin: not this checkout's
            self._resolved.appendleft(
                LeakRecord(
                    slot_id=slot.id,
                    pid=slot.pid,
                    holder=leak.holder,
                    site=format_site(site),
                    leak_class=leak.leak_class,
                    detected_at=self._to_wall(leak.detected_at),
                    held_for_s=held,
                    resolved_at=self._to_wall(now),
                    how_resolved=how,
                )
            )
            log.info(
                "connection leak resolved after %.1f s: slot %d %s (held by %s)",
                held, slot.id, how.replace("_", " "), leak.holder.route,
            )  # fmt: skip

    def _release(self, slot: Slot, now: float, how: str) -> None:
        """A checkout ends without a checkin (detached): the checkout stays in the history."""
        holding = slot.holding
        if holding is None:
            return
        slot.holding = None
        self._use_samples.append(now - holding[0])
        slot.history.append((holding[0], "checkout", ""))
        if how == "gc_reclaimed" or slot.leak is not None:
            self._finish(slot, holding, now, how)
        if holding[1] is not None:
            holding[1].connections_held -= 1

    def _flag_multi_connection(self, request: RequestScope) -> None:
        """A request holds a second connection (or one more): record it, with every site."""
        first = not request.multi_flagged
        request.multi_flagged = True
        with self._lock:
            held = request.connections_held
            previous = next((m for m in self._multi if m.request_id == request.request_id), None)
            if not first and (previous is None or previous.connections >= held):
                return
            sites = tuple(
                format_site(holding[3]) for _, holding in self._held() if holding[1] is request
            )
            route = f"{request.method} {request.route}"
            if first:
                self._count["multi_connection_requests"] += 1
                self._multi.appendleft(
                    MultiConnectionRequest(self._wall(), route, request.request_id, held, sites)
                )
            elif previous is not None:  # the same request took one more: keep its peak
                index = self._multi.index(previous)
                self._multi[index] = MultiConnectionRequest(
                    previous.at, route, request.request_id, held, sites
                )
        if first:
            log.warning(
                "request %s holds %d connections at once (one session per request), taken at %s",
                route, held, " and ".join(str(site[0]) if site else "?" for site in sites),
            )  # fmt: skip

    def _record_timeout(self, waited_s: float, waiter: Holder, raw_site: RawSite) -> None:
        now = self._clock()
        site = format_site(raw_site)
        with self._lock:
            self._count["timeouts"] += 1
            holders = tuple(self._view(slot, now, None) for slot, _ in self._held())
            self._timeouts.appendleft(
                PoolTimeoutRecord(self._to_wall(now), waited_s, holders, waiter, site)
            )
        summary = "; ".join(
            f"slot {view.slot_id} {view.holder.route if view.holder else '?'} "
            f"{(view.held_for_s or 0):.1f}s at {view.site[0] if view.site else '?'}"
            for view in holders
        )
        log.warning(
            "pool %s timed out after %.2f s for %s at %s; holders: %s",
            self.pool_name,
            waited_s,
            waiter.route,
            site[0] if site else "unknown site",
            summary or "none",
        )


def classify(server_state: str | None) -> LeakClass:
    """Leak class from pg_stat_activity.state of the held connection's backend."""
    if server_state is None:
        return LeakClass.UNKNOWN
    if server_state.startswith("idle in transaction"):
        return LeakClass.IDLE_IN_TRANSACTION
    if server_state == "idle":
        return LeakClass.IDLE
    if server_state in ("active", "fastpath function call"):
        return LeakClass.ACTIVE
    return LeakClass.UNKNOWN
