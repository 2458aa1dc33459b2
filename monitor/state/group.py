"""One view of a process group: the snapshots its workers publish, merged; pure, stdlib only.

Counters and histograms add up over every worker not yet retired plus the retired totals (the
workers that exited), so a group counter never goes down; gauges and held connections come from
live workers only. Gauges are summed: the group is one monitor to Prometheus (worker pids would be
unbounded label values), the dashboard names the worker of each connection.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from monitor.state.histogram import HistogramSnapshot
from monitor.state.records import (
    PoolCounters,
    PoolSnapshot,
    PoolStats,
    SlowQueryGroup,
)

SCHEMA_VERSION = 1
MAX_RECORDS = 200  # per merged list, as one tracker keeps
MAX_TIMEOUTS = 20
MAX_SLOW_GROUPS = 500
REAPED_KEPT_S = 600.0  # a reaped worker's key is remembered this long (readers racing the reap)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """What one worker publishes: its pool snapshot and the pool's own counts, versioned."""

    schema: int
    pid: int
    started_at: float  # unix time the worker's monitor started
    published_at: float  # unix time of this report
    pool: PoolSnapshot
    stats: PoolStats
    # Counted by the worker against the server sample it had: a summary carries no connections.
    phantoms: int = 0
    orphans: int = 0

    @property
    def key(self) -> str:
        return worker_key(self.pid, self.started_at)


def worker_key(pid: int, started_at: float) -> str:
    """One worker's identity: its pid alone is reused once it exits."""
    return f"{pid}-{round(started_at * 1000)}"


@dataclass(frozen=True, slots=True)
class RetiredTotals:
    """Counters and histograms of the group's exited workers, and which workers were folded in."""

    counters: PoolCounters | None = None
    wait_time: HistogramSnapshot | None = None
    use_time: HistogramSnapshot | None = None
    create_time: HistogramSnapshot | None = None
    reaped: dict[str, float] = field(default_factory=dict)  # worker key -> unix time folded in
    workers: int = 0  # how many workers retired so far


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """Which workers a group view covers and which one answered."""

    answered_by: int  # pid
    workers: tuple[int, ...]  # pids of the live workers shown, the answering one first
    stale_workers: int  # published too long ago: counted, not shown
    retired_workers: int
    # From the other workers' summaries (a metrics view merges no connections of theirs).
    phantoms_elsewhere: int = 0
    orphans_elsewhere: int = 0


def summary(report: WorkerReport) -> WorkerReport:
    """The report without connections and record lists: what a scrape needs of another worker
    (counters, histograms, counts, current leaks), a few hundred bytes instead of kilobytes."""
    pool = dataclasses.replace(
        report.pool,
        connections=(),
        leaks=tuple(dataclasses.replace(leak, site=()) for leak in report.pool.leaks),
        resolved_leaks=(),
        gc_reclaims=(),
        timeouts=(),
        slow_queries=(),
        multi_connection_requests=(),
        events=(),
        multi_pool_requests=(),
    )
    return dataclasses.replace(report, pool=pool)


def retire(totals: RetiredTotals, report: WorkerReport, now: float) -> RetiredTotals:
    """`totals` with `report`'s counters and histograms folded in (a worker that is gone)."""
    if report.key in totals.reaped:
        return totals
    pool = report.pool
    reaped = {key: at for key, at in totals.reaped.items() if now - at < REAPED_KEPT_S}
    reaped[report.key] = now
    return RetiredTotals(
        counters=_add_counters(totals.counters, pool.counters),
        wait_time=_add_histograms(totals.wait_time, pool.wait_time),
        use_time=_add_histograms(totals.use_time, pool.use_time),
        create_time=_add_histograms(totals.create_time, pool.create_time),
        reaped=reaped,
        workers=totals.workers + 1,
    )


def merge_reports(
    reports: Sequence[WorkerReport],
    retired: RetiredTotals,
    *,
    now: float,
    stale_after_s: float,
    published: WorkerReport | None = None,
) -> tuple[PoolSnapshot, PoolStats, GroupInfo]:
    """The group's pool snapshot and stats; `reports[0]` is the answering worker's (fresh).

    Counters and histograms come from the published reports only (`published`: this worker's
    last one): a counter a reader shows is on disk, so it never goes down for the next reader,
    even if the answering worker dies right after. They lag the gauges by a publish interval.
    """
    own = reports[0]
    others = [r for r in reports[1:] if r.key not in retired.reaped and r.key != own.key]
    counted = [published or own, *others]
    live = [own, *(r for r in others if now - r.published_at <= stale_after_s)]
    pools = [r.pool for r in live]  # their records carry their worker's pid already
    counters = retired.counters
    wait, use, create = retired.wait_time, retired.use_time, retired.create_time
    for report in counted:
        counters = _add_counters(counters, report.pool.counters)
        wait = _add_histograms(wait, report.pool.wait_time)
        use = _add_histograms(use, report.pool.use_time)
        create = _add_histograms(create, report.pool.create_time)
    assert counters is not None and wait is not None and use is not None and create is not None
    base = own.pool
    pool = PoolSnapshot(
        pool_name=base.pool_name,
        taken_at=max(p.taken_at for p in pools),
        leak_threshold_s=base.leak_threshold_s,
        slow_query_s=base.slow_query_s,
        connections=tuple(c for p in pools for c in p.connections),
        checked_out=sum(p.checked_out for p in pools),
        pending_requests=sum(p.pending_requests for p in pools),
        counters=counters,
        wait_time=wait,
        use_time=use,
        create_time=create,
        leaks=tuple(sorted((x for p in pools for x in p.leaks), key=lambda x: x.detected_at)),
        resolved_leaks=_newest(
            (p.resolved_leaks for p in pools), lambda x: x.resolved_at or 0.0, MAX_RECORDS
        ),
        gc_reclaims=_newest((p.gc_reclaims for p in pools), lambda x: x.at, MAX_RECORDS),
        timeouts=_newest((p.timeouts for p in pools), lambda x: x.at, MAX_TIMEOUTS),
        slow_queries=_merge_slow(p.slow_queries for p in pools),
        multi_connection_requests=_newest(
            (p.multi_connection_requests for p in pools), lambda x: x.at, MAX_RECORDS
        ),
        events=_newest((p.events for p in pools), lambda x: x.at, MAX_RECORDS),
        detached_pids=tuple(sorted({pid for p in pools for pid in p.detached_pids})),
        long_holds=tuple(
            sorted((x for p in pools for x in p.long_holds), key=lambda x: -x.held_for_s)
        ),
        multi_pool_requests=_newest(
            (p.multi_pool_requests for p in pools), lambda x: x.at, MAX_RECORDS
        ),
        accounting_drift=_sum_known(p.accounting_drift for p in pools),
        idle_in_transaction_min_s=base.idle_in_transaction_min_s,
    )
    stats = _sum_stats([r.stats for r in live])
    summaries = [r for r in live[1:] if not r.pool.connections]
    info = GroupInfo(
        answered_by=own.pid,
        workers=tuple(r.pid for r in live),
        stale_workers=len(others) + 1 - len(live),
        retired_workers=retired.workers,
        phantoms_elsewhere=sum(r.phantoms for r in summaries),
        orphans_elsewhere=sum(r.orphans for r in summaries),
    )
    return pool, stats, info


def _sum_known(values: Iterable[int | None]) -> int | None:
    known = [value for value in values if value is not None]
    return sum(known) if known else None


def _add_counters(a: PoolCounters | None, b: PoolCounters) -> PoolCounters:
    if a is None:
        return b
    added: dict[str, Any] = {}
    for f in dataclasses.fields(PoolCounters):
        mine, theirs = getattr(a, f.name), getattr(b, f.name)
        if isinstance(mine, dict):  # counts by class or route: added key by key
            merged = dict(mine)
            for key, count in theirs.items():
                merged[key] = merged.get(key, 0) + count
            added[f.name] = merged
        else:
            added[f.name] = mine + theirs
    return PoolCounters(**added)


def _add_histograms(a: HistogramSnapshot | None, b: HistogramSnapshot) -> HistogramSnapshot:
    if a is None:
        return b
    if a.bounds != b.bounds:  # another version's buckets: cannot be added bucket by bucket
        return a if a.count >= b.count else b
    return HistogramSnapshot(
        bounds=a.bounds,
        cumulative_counts=tuple(
            x + y for x, y in zip(a.cumulative_counts, b.cumulative_counts, strict=True)
        ),
        sum=a.sum + b.sum,
        count=a.count + b.count,
    )


def _sum_stats(stats: Sequence[PoolStats]) -> PoolStats:
    own = stats[0]
    return dataclasses.replace(
        own,
        size=sum(s.size for s in stats),
        max_overflow=sum(s.max_overflow for s in stats),
        max_connections=sum(s.max_connections for s in stats),
        checked_out=sum(s.checked_out for s in stats),
        checked_in=sum(s.checked_in for s in stats),
        overflow=sum(s.overflow for s in stats),
    )


def _newest(lists: Iterable[Sequence[T]], at: Callable[[T], float], limit: int) -> tuple[T, ...]:
    items = [item for items in lists for item in items]
    return tuple(heapq.nlargest(limit, items, key=at))


def _merge_slow(lists: Iterable[Sequence[SlowQueryGroup]]) -> tuple[SlowQueryGroup, ...]:
    merged: dict[str, SlowQueryGroup] = {}
    for groups in lists:
        for group in groups:
            seen = merged.get(group.fingerprint)
            if seen is None:
                merged[group.fingerprint] = group
                continue
            latest = group if group.last_seen_at >= seen.last_seen_at else seen
            merged[group.fingerprint] = dataclasses.replace(
                latest,
                count=seen.count + group.count,
                total_s=seen.total_s + group.total_s,
                max_s=max(seen.max_s, group.max_s),
            )
    ordered = sorted(merged.values(), key=lambda g: g.total_s, reverse=True)
    return tuple(ordered[:MAX_SLOW_GROUPS])
