"""The pool tracker: every connection of one pool, who holds it, leaks, timeouts and slow queries.

Hot-path methods (`checkout`, `checkin`, `reset`) do only attribute writes and deque appends;
each slot is touched by one thread at a time because the pool hands it to one holder. A checkout
is one tuple (`Holding`) set on the slot and cleared by the checkin: whether a slot is checked
out, since when and by whom is read from that one attribute. Everything else (sweeps, snapshots,
rare events) takes the lock.

Leaks are judged by ownership first, time second: a connection still out when its owner (request,
WebSocket, background work, task or thread) has finished outlived it, a leak at once; one held
past the threshold by a live owner is a long hold, and a suspected leak only when it sits unused
past the threshold or is held past a ceiling.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
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
from monitor.state.holders import (
    Holder,
    RequestScope,
    count_by_route,
    describe,
    live_threads,
    owner_finished,
)
from monitor.state.records import (
    NO_SERVER_SESSION,
    ConnectionView,
    GcReclaim,
    LeakClass,
    LeakRecord,
    LifecycleEvent,
    LongHold,
    MultiConnectionRequest,
    MultiPoolRequest,
    PoolCounters,
    PoolSnapshot,
    PoolTimeoutRecord,
    SlowQueryGroup,
)
from monitor.state.sites import RawSite, format_site

log = logging.getLogger("monitor.leaks")

_HISTORY_PER_SLOT = 24
DEFAULT_CEILING_FACTOR = 10  # the hard ceiling of a long hold, in leak thresholds
# Reads of both counts for the drift: a checkout or checkin in flight on another thread makes
# them differ for microseconds; a real accounting error differs in every read.
_DRIFT_READS = 6
IN_USE = float("inf")  # a slot's `used_at` while a statement runs on it

# One checkout while it lasts: (checked_out_at, request, task, site). `task` is the asyncio task
# or the thread's ident when no request holds it (named only when shown).
Holding = tuple[float, RequestScope | None, object, RawSite]

# A slot's lifecycle event: (monotonic time, kind, note).
HistoryEntry = tuple[float, str, str]


class Slot:
    """One pool slot (a SQLAlchemy connection record), stable across reconnects."""

    __slots__ = (
        "address",
        "checkouts",
        "connected_at",
        "cycles",
        "history",
        "holding",
        "id",
        "leak",
        "long_hold",
        "pid",
        "used_at",
    )

    def __init__(self, slot_id: int, connected_at: float) -> None:
        self.id = slot_id
        self.pid: int | None = None
        self.address: tuple[str, int] | None = None  # the app's end of a TCP socket
        self.connected_at = connected_at
        self.holding: Holding | None = None  # set while checked out
        self.checkouts = 0
        self.leak: _Leak | None = None
        self.long_hold: Holding | None = None  # the checkout last counted as a long hold
        # When the connection was last used (checkout, a statement's end); +inf while a
        # statement runs. Written by the statement wrapper without the lock (one float).
        self.used_at = connected_at
        self.history: deque[HistoryEntry] = deque(maxlen=_HISTORY_PER_SLOT)
        # Ended checkouts as complex(checked_out_at, checked_in_at): two floats in one object
        # that the garbage collector does not track (a tuple per checkin, kept here and until
        # the next fold, doubled the objects it had to look at in a busy app).
        self.cycles: deque[complex] = deque(maxlen=_HISTORY_PER_SLOT)


class _Leak:
    """A suspected leak of one checkout: stale once the slot's holding is another one."""

    __slots__ = ("detected_at", "holder", "holding", "leak_class", "reason")

    def __init__(
        self,
        detected_at: float,
        holder: Holder,
        holding: Holding,
        leak_class: LeakClass,
        reason: str = "",
    ) -> None:
        self.detected_at = detected_at
        self.holder = holder
        self.holding = holding
        self.leak_class = leak_class
        self.reason = reason


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
        long_hold_ceiling_s: float | None = None,
        long_hold_routes: Mapping[str, float] | None = None,
        idle_in_transaction_min_s: float = 1.0,
        pool_checked_out: Callable[[], int] | None = None,
    ) -> None:
        """`long_hold_ceiling_s`: a live owner holding longer is a suspect however busy (default
        10x the threshold); `long_hold_routes`: route template -> its declared ceiling;
        `pool_checked_out`: the pool's own count, read for the drift."""
        self.pool_name = pool_name
        self.leak_threshold_s = leak_threshold_s
        self.slow_query_s = slow_query_s
        self.long_hold_ceiling_s = (
            long_hold_ceiling_s
            if long_hold_ceiling_s is not None
            else DEFAULT_CEILING_FACTOR * leak_threshold_s
        )
        self.long_hold_routes: dict[str, float] = dict(long_hold_routes or {})
        self.idle_in_transaction_min_s = idle_in_transaction_min_s
        self._pool_checked_out = pool_checked_out
        # Checkouts the pool counts and no slot shows yet or any more: a new connection being
        # opened for a checkout, a checkin on its way back (closing an overflow connection).
        # Appended and popped by the pool wrappers (deque operations are atomic).
        self.connecting: deque[None] = deque()
        self.returning: deque[None] = deque()
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
        self._multi_pool: deque[MultiPoolRequest] = deque(maxlen=max_records)
        self._events: deque[LifecycleEvent] = deque(maxlen=max_records)
        self._slow: OrderedDict[str, list[Any]] = OrderedDict()
        # Backend pids of connections detached from the pool and still open (bounded).
        self._detached_pids: OrderedDict[int, None] = OrderedDict()
        self._max_records = max_records
        # The worker process's pid on every record, when several workers are one monitor.
        self.worker: int | None = None

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
                "long_holds",
                "multi_pool_requests",
            ),
            0,
        )
        self._leaks_by_class: dict[str, int] = {leak_class.value: 0 for leak_class in LeakClass}
        self._leaks_by_route: dict[str, int] = {}
        self._timeouts_by_route: dict[str, int] = {}

    # ---- lifecycle (rare: under the lock) -------------------------------------------------

    @property
    def clock(self) -> Clock:
        return self._clock

    def new_slot(self) -> Slot:
        return Slot(next(self._ids), self._clock())

    def connected(
        self,
        slot: Slot,
        pid: int | None,
        create_s: float | None,
        *,
        address: tuple[str, int] | None = None,
    ) -> None:
        now = self._clock()
        with self._lock:
            slot.pid = pid
            slot.address = address
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
            slot.address = None

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
            if not reclaimed and slot.pid is not None:
                self._detached_pids[slot.pid] = None
                if len(self._detached_pids) > self._max_records:
                    self._detached_pids.popitem(last=False)
            if self._open.pop(slot.id, None) is not None:
                self._retired_checkouts += slot.checkouts
                slot.checkouts = 0
            slot.history.append((now, "detach", ""))

    def detached_closed(self, pid: int | None) -> None:
        """A detached connection was closed: its backend is no orphan of ours any more."""
        if pid is not None:
            with self._lock:
                self._detached_pids.pop(pid, None)

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
        """`request`: the request or WebSocket in flight (its background work once its response
        is sent); `task`: the asyncio task, or the thread's ident (named only when shown);
        `waited_s`: how long the caller waited for the pool, when the acquire wrapper timed it;
        `at`: when, on this tracker's clock, if the caller read it already (one call saved)."""
        if at is None:
            at = self._clock()
        if request is not None and request.response_sent:
            request = request.background()
        slot.holding = (at, request, task, site)
        slot.used_at = at
        slot.checkouts += 1
        if waited_s is not None:
            # Histogram.observe inlined (this runs on every checkout); the checkin folds.
            self._wait_samples.append(waited_s)
        if request is not None:
            held = request.held
            before = held.get(self)
            held[self] = count = 1 if before is None else before + 1
            if count > 1:
                self._flag_multi_connection(request, count)
            elif before is None and len(held) > 1:
                self._note_pools(request)

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
            held = request.held
            held[self] = held.get(self, 1) - 1
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
        task: object = None,
        site: RawSite = (),
    ) -> None:
        """A caller waited and got no connection (pool timeout, or the connect failed);
        `request`/`task` and `site`: who waited (named in the log) and where it asked."""
        self.wait_time.observe(waited_s)
        if timed_out:
            waiter = describe(request, threading.get_ident() if task is None else task)
            self._record_timeout(waited_s, waiter, site, request)

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
        """Flag connections whose owner finished, and those of live owners left unused past the
        threshold or held past their ceiling; count long holds. Logs each new suspect once."""
        now = self._clock()
        threads = live_threads()
        found: list[LeakRecord] = []
        with self._lock:
            for slot, holding in self._held():
                state = server_states.get(slot.pid) if server_states and slot.pid else None
                leak = slot.leak
                if leak is not None and leak.holding is holding:
                    leak_class = classify(state)
                    if leak_class is not LeakClass.UNKNOWN and leak.reason != _OUTLIVED:
                        leak.leak_class = leak_class
                    continue
                verdict = self._judge(slot, holding, now, threads)
                if verdict is None:
                    continue
                reason = verdict
                leak_class = LeakClass.OUTLIVED_OWNER if reason == _OUTLIVED else classify(state)
                holder = describe(holding[1], holding[2])
                leak = slot.leak = _Leak(now, holder, holding, leak_class, reason)
                if slot.holding is not holding:
                    slot.leak = None  # checked in meanwhile (checkin does not take the lock)
                    continue
                self._leaks_by_class[leak_class.value] += 1
                count_by_route(self._leaks_by_route, holding[1])
                record = self._leak_record(slot, leak, now)
                found.append(record)
                where = record.site[0] if record.site else "unknown site"
                log.warning(
                    "connection leak suspected (%s): slot %d (pid %s) held %.1f s by %s %s, %s; "
                    "taken at %s",
                    leak_class.value, slot.id, slot.pid, record.held_for_s, holder.kind,
                    holder.label, reason, where,
                    extra=_log_extra(holder),
                )  # fmt: skip
        return found

    def _judge(
        self, slot: Slot, holding: Holding, now: float, threads: frozenset[int]
    ) -> str | None:
        """Why this checkout is a suspected leak, or None (under the lock). Counts a long hold."""
        owner = holding[1]
        if owner_finished(owner, holding[2], threads):
            return _OUTLIVED
        held_s = now - holding[0]
        if held_s < self.leak_threshold_s:
            return None
        declared = self._declared_ceiling(owner)
        ceiling = self.long_hold_ceiling_s if declared is None else declared
        if held_s >= ceiling:
            return f"held past its {ceiling:g} s ceiling"
        unused_s = now - slot.used_at
        # A declared long holder is judged by its ceiling alone: it may stream from a
        # server-side cursor, whose fetches the monitor does not see as statements.
        if declared is None and unused_s >= self.leak_threshold_s:
            return f"unused for {unused_s:.1f} s"
        if slot.long_hold is not holding:
            slot.long_hold = holding
            self._count["long_holds"] += 1
        return None

    def _declared_ceiling(self, owner: RequestScope | None) -> float | None:
        """The ceiling the owner's route declared (dependency or setting), its parent's for
        background work."""
        while owner is not None:
            if owner.long_hold_s is not None:
                return owner.long_hold_s
            if self.long_hold_routes:
                ceiling = self.long_hold_routes.get(owner.route)
                if ceiling is not None:
                    return ceiling
            owner = owner.parent
        return None

    # ---- readers -----------------------------------------------------------------------------

    def snapshot(
        self, server_states: Mapping[int, str | None] | None = None, *, detail: bool = True
    ) -> PoolSnapshot:
        """Everything, or with `detail=False` no per-slot history, sites or record lists (what a
        Prometheus scrape needs: counts and classes only, several times cheaper)."""
        drift = self.accounting_drift()
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
            long_holds = tuple(
                self._long_hold(slot, holding, now, detail)
                for slot, holding in held
                if slot.long_hold is holding
                and (slot.leak is None or slot.leak.holding is not holding)
            )
            counters = PoolCounters(
                checkouts=self._retired_checkouts + sum(s.checkouts for s in self._open.values()),
                leaks_by_class=dict(self._leaks_by_class),
                leaks_by_route=dict(self._leaks_by_route),
                timeouts_by_route=dict(self._timeouts_by_route),
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
                detached_pids=tuple(self._detached_pids),
                long_holds=long_holds,
                multi_pool_requests=tuple(self._multi_pool) if detail else (),
                accounting_drift=drift,
                idle_in_transaction_min_s=self.idle_in_transaction_min_s,
            )

    def accounting_drift(self) -> int | None:
        """Checked out as the monitor counts (slots held, connections opening for a checkout or
        on their way back) minus the pool's count, from reads where the pool stood still; the
        smallest seen when none agreed. None without a pool count to compare with."""
        read = self._pool_checked_out
        if read is None:
            return None
        best: int | None = None
        try:
            for attempt in range(_DRIFT_READS):
                if attempt > 1:
                    time.sleep(0.0005)  # let a thread paused mid-checkout finish it
                before = read()
                with self._lock:
                    ours = len(self._held())
                ours += len(self.connecting) + len(self.returning)
                if read() != before:
                    continue
                drift = ours - before
                if drift == 0:
                    return 0
                if best is None or abs(drift) < abs(best):
                    best = drift
        except Exception:
            return None
        return best

    @property
    def checked_out(self) -> int:
        with self._lock:
            return len(self._held())

    # ---- internals ---------------------------------------------------------------------------

    def counts(self) -> tuple[int, int]:
        """(checked out, open): what pools without counters of their own are measured by."""
        with self._lock:
            held = self._held()
            return len(held), len(self._open) + sum(1 for s, _ in held if s.id not in self._open)

    def pids(self) -> set[int]:
        """Backend pids of the pool's open connections."""
        with self._lock:
            return {slot.pid for slot in self._open.values() if slot.pid is not None}

    def checked_out_keys(self) -> frozenset[tuple[int, int]]:
        """(slot id, checkout number) of every checkout held now: what a caller asking at every
        test phase needs (the pytest plugin), without the cost of a snapshot."""
        with self._lock:
            return frozenset((slot.id, slot.checkouts) for slot, _ in self._held())

    def event_counts(self) -> tuple[int, int, int]:
        """Garbage-collected reclaims, pool timeouts and multi-connection requests so far."""
        count = self._count
        return count["gc_reclaimed"], count["timeouts"], count["multi_connection_requests"]

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
            if (
                server_states is not None
                and slot.pid is not None
                and slot.pid in server_states
                and leak_class is not LeakClass.OUTLIVED_OWNER
            ):
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
            client_addr=slot.address[0] if slot.address else None,
            client_port=slot.address[1] if slot.address else None,
            worker=self.worker,
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
            worker=self.worker,
            reason=leak.reason,
        )

    def _long_hold(self, slot: Slot, holding: Holding, now: float, detail: bool) -> LongHold:
        declared = self._declared_ceiling(holding[1])
        return LongHold(
            slot_id=slot.id,
            pid=slot.pid,
            holder=describe(holding[1], holding[2]),
            site=format_site(holding[3]) if detail else (),
            held_for_s=now - holding[0],
            unused_for_s=max(0.0, now - slot.used_at),
            ceiling_s=self.long_hold_ceiling_s if declared is None else declared,
            declared=declared is not None,
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
                "connection reclaimed by the garbage collector: slot %d held %.1f s by %s %s, "
                "taken at %s (close your sessions)",
                slot.id, held, holder.kind, holder.label, where[0] if where else "unknown site",
                extra=_log_extra(holder),
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
                    worker=self.worker,
                    reason=leak.reason,
                )
            )
            log.info(
                "connection leak resolved after %.1f s: slot %d %s (held by %s %s)",
                held, slot.id, how.replace("_", " "), leak.holder.kind, leak.holder.label,
                extra=_log_extra(leak.holder),
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
        request = holding[1]
        if request is not None:
            held = request.held
            held[self] = held.get(self, 1) - 1

    def _flag_multi_connection(self, request: RequestScope, held: int) -> None:
        """A request holds a second connection of this pool (or one more): record it, with
        every site; logged once per request and pool."""
        first = request.multi_flagged is None or self not in request.multi_flagged
        with self._lock:
            if first:
                if request.multi_flagged is None:
                    request.multi_flagged = set()
                request.multi_flagged.add(self)
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
            holder = describe(request, None)
            log.warning(
                "request %s holds %d connections of pool %s at once (one session per request), "
                "taken at %s",
                holder.label, held, self.pool_name,
                " and ".join(str(site[0]) if site else "?" for site in sites),
                extra=_log_extra(holder),
            )  # fmt: skip

    def _note_pools(self, request: RequestScope) -> None:
        """The request's first checkout here while it used another pool: a read/write split."""
        pools = tuple(str(getattr(tracker, "pool_name", "?")) for tracker in list(request.held))
        with self._lock:
            self._count["multi_pool_requests"] += 1
            self._multi_pool.appendleft(
                MultiPoolRequest(
                    self._wall(), f"{request.method} {request.route}", request.request_id, pools
                )
            )

    def _record_timeout(
        self, waited_s: float, waiter: Holder, raw_site: RawSite, request: RequestScope | None
    ) -> None:
        now = self._clock()
        site = format_site(raw_site)
        with self._lock:
            self._count["timeouts"] += 1
            count_by_route(self._timeouts_by_route, request)
            holders = tuple(self._view(slot, now, None) for slot, _ in self._held())
            self._timeouts.appendleft(
                PoolTimeoutRecord(self._to_wall(now), waited_s, holders, waiter, site)
            )
        summary = "; ".join(
            f"slot {view.slot_id} {view.holder.kind + ' ' + view.holder.label if view.holder else '?'} "
            f"{(view.held_for_s or 0):.1f}s at {view.site[0] if view.site else '?'}"
            for view in holders
        )
        log.warning(
            "pool %s timed out after %.2f s for %s %s at %s; holders: %s",
            self.pool_name, waited_s, waiter.kind, waiter.label,
            site[0] if site else "unknown site", summary or "none",
            extra=_log_extra(waiter),
        )  # fmt: skip


_OUTLIVED = "outlived its owner"


def _log_extra(holder: Holder) -> dict[str, str | None]:
    """Structured fields for log handlers that keep them (JSON logging)."""
    return {"request_id": holder.request_id, "owner": holder.kind, "holder": holder.route}


def classify(server_state: str | None) -> LeakClass:
    """Leak class from pg_stat_activity.state of the held connection's backend."""
    if server_state is None:
        return LeakClass.UNKNOWN
    if server_state == NO_SERVER_SESSION:
        return LeakClass.NO_SERVER_VIEW
    if server_state.startswith("idle in transaction"):
        return LeakClass.IDLE_IN_TRANSACTION
    if server_state == "idle":
        return LeakClass.IDLE
    if server_state in ("active", "fastpath function call"):
        return LeakClass.ACTIVE
    return LeakClass.UNKNOWN
