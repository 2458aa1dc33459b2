"""Pure view-model builders: a `MonitorView` in, already-formatted strings and numbers out.

Templates only loop and test; every unit, age and status label is decided here or in
`formatting`. No I/O, no clock. The pool's panels live here, the server's in `server_panels`;
`BUILDERS` names them all.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from monitor.state.records import LeakClass, PoolTimeoutRecord
from monitor.state.server import Backend
from monitor.state.verdicts import RuleVerdict
from monitor.state.view import HeldConnection, MonitorView
from monitor.state.visibility import incomplete_note
from monitor.web.formatting import (
    NOTHING,
    STATUS_LABELS,
    Fact,
    SiteFrame,
    Sparkline,
    ago,
    bound_label,
    clock_time,
    duration,
    holder_label,
    pid_text,
    quantile,
    request_id_label,
    site_frames,
    site_summary,
    span,
    sparkline,
    wait_event_text,
    worst_status,
)
from monitor.web.history import GaugeSample
from monitor.web.pgbouncer_panel import build_pgbouncer
from monitor.web.render_context import RenderContext
from monitor.web.server_panels import build_blocking, build_orphans, build_server

LEAK_LABELS = {
    LeakClass.OUTLIVED_OWNER: "outlived its owner",
    LeakClass.IDLE_IN_TRANSACTION: "idle in transaction",
    LeakClass.IDLE: "idle but held",
    LeakClass.ACTIVE: "active long query",
    LeakClass.UNKNOWN: "no server data yet",
    LeakClass.NO_SERVER_VIEW: "held, behind a pooler (no server session of its own)",
}
LEAK_STATUS = {
    LeakClass.OUTLIVED_OWNER: "fail",
    LeakClass.IDLE_IN_TRANSACTION: "fail",
    LeakClass.IDLE: "warn",
    LeakClass.ACTIVE: "warn",
    LeakClass.UNKNOWN: "warn",
    LeakClass.NO_SERVER_VIEW: "warn",
}


# ---- status and banner -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Banner:
    level: str  # warn or fail
    title: str
    detail: str


@dataclass(frozen=True, slots=True)
class StatusPanel:
    banner: Banner | None
    status: str
    status_label: str
    reason: str  # what is wrong now, in one line ("" when all is well)
    since: str
    database: str
    url_source: str
    sslmode: str
    pool: str
    server_version: str
    updated: str


def server_banner(view: MonitorView) -> Banner | None:
    """Say plainly when the server side is missing: database down, or no probe has succeeded."""
    server, now = view.server, view.pool.taken_at
    error = server.last_error or "no error recorded"
    if server.up is None:
        return Banner(
            "warn",
            "Waiting for the first server probe",
            "Pool data is live; the server side (pg_stat_activity) appears after the first probe.",
        )
    if server.up:
        return None
    if server.last_success_at is None:
        return Banner(
            "fail",
            "Database unreachable: the probe has never succeeded",
            f"{server.errors_total} failed probe(s), last {ago(server.last_error_at, now)}: {error}",
        )
    return Banner(
        "fail",
        "Database unreachable",
        f"Last successful probe {ago(server.last_success_at, now)}; server data below is stale. "
        f"Last error: {error}",
    )


def build_status(view: MonitorView, ctx: RenderContext) -> StatusPanel:
    sample = view.server.last_sample
    status = worst_status(rule.status for rule in view.rules)
    worst = [rule for rule in view.rules if rule.status == status and status in ("warn", "fail")]
    reason, since = "", ""
    if worst:
        first = min(worst, key=lambda rule: rule.since if rule.since is not None else 0.0)
        reason = f"{first.rule}: {first.why}"
        if len(worst) > 1:
            reason += f" (and {len(worst) - 1} more rule(s), below)"
        since = verdict_since(first, view.pool.taken_at, view.verdict_window_s)
    if view.server.up is False:
        status = "fail"
        reason = reason or "the database does not answer the probe"
    return StatusPanel(
        banner=server_banner(view),
        status=status,
        status_label=STATUS_LABELS.get(status, status),
        reason=reason,
        since=since,
        database=view.app.database,
        url_source=view.app.url_source,
        sslmode=view.app.sslmode or "not set",
        pool=f"{view.pool.pool_name} ({view.pool_stats.pool_class})",
        server_version=f"PostgreSQL {sample.settings.server_version}" if sample else NOTHING,
        updated=clock_time(view.pool.taken_at),
    )


# ---- pool gauges -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GaugeTile:
    label: str
    value: str
    detail: str
    status: str
    spark: Sparkline | None
    fill_pct: int | None = None  # a bar under the value, 0-100

    @property
    def status_label(self) -> str:
        return STATUS_LABELS.get(self.status, self.status)


@dataclass(frozen=True, slots=True)
class GaugesPanel:
    tiles: tuple[GaugeTile, ...]
    settings: str
    facts: tuple[Fact, ...]
    window: str
    fresh: str = ""


def _series(
    ctx: RenderContext, pick: Callable[[GaugeSample], float], title: str
) -> Sparkline | None:
    points = [(s.at, pick(s)) for s in ctx.samples]
    return sparkline(points, window_s=ctx.shown_window_s, now=ctx.samples_now, title=title)


def _interval_p95(bounds: Sequence[float], samples: Sequence[GaugeSample]) -> list[float]:
    """Wait p95 between consecutive samples; 0 when nothing checked out in that interval."""
    values: list[float] = []
    for older, newer in itertools.pairwise(samples):
        if len(older.wait_counts) != len(newer.wait_counts):
            values.append(0.0)
            continue
        delta = [b - a for a, b in zip(older.wait_counts, newer.wait_counts, strict=True)]
        bound = quantile(bounds, delta, 0.95)
        finite = max((b for b in bounds if not math.isinf(b)), default=0.0)
        values.append(0.0 if bound is None else finite if math.isinf(bound) else bound)
    return values


def build_gauges(view: MonitorView, ctx: RenderContext) -> GaugesPanel:
    stats, pool, counters = view.pool_stats, view.pool, view.pool.counters
    wait = pool.wait_time
    used, maximum = stats.checked_out, stats.max_connections
    window = duration(ctx.shown_window_s)

    used_status = "ok"
    if maximum > 0 and used >= maximum:
        used_status = "fail"
    elif used > stats.size:
        used_status = "warn"

    # p95 over the window: the current histogram minus the oldest sample of the window.
    oldest = ctx.samples[0].wait_counts if ctx.samples else ()
    current = wait.cumulative_counts
    if len(oldest) == len(current):
        recent = [now - then for now, then in zip(current, oldest, strict=True)]
    else:
        recent = list(current)
    checkouts = recent[-1] if recent else 0
    span = ctx.samples_now - ctx.samples[0].at if ctx.samples else None
    recently = f"in the last {duration(span)}" if span else "since start"
    p95 = quantile(wait.bounds, recent, 0.95)
    wait_spark = None
    if len(ctx.samples) >= 3:
        values = _interval_p95(wait.bounds, ctx.samples)
        points = [(s.at, v) for s, v in zip(ctx.samples[1:], values, strict=True)]
        wait_spark = sparkline(
            points, window_s=ctx.shown_window_s, now=ctx.samples_now, title="wait p95 per interval"
        )
    mean = wait.sum / wait.count if wait.count else None

    tiles = (
        GaugeTile(
            "In use",
            str(used),
            f"of {maximum} (pool_size {stats.size} + max_overflow {stats.max_overflow})",
            used_status,
            _series(ctx, lambda s: s.used, f"connections in use, last {window}"),
            fill_pct=_pct(used, maximum),
        ),
        GaugeTile(
            "Idle",
            str(stats.checked_in),
            "open in the pool, ready for a checkout",
            "ok",
            _series(ctx, lambda s: s.idle, f"idle connections, last {window}"),
        ),
        GaugeTile(
            "Overflow",
            str(stats.overflow),
            f"beyond pool_size, at most {stats.max_overflow}",
            "warn" if stats.overflow > 0 else "ok",
            _series(ctx, lambda s: s.overflow, f"overflow connections, last {window}"),
            fill_pct=_pct(stats.overflow, stats.max_overflow),
        ),
        GaugeTile(
            "Max",
            str(maximum),
            f"the pool's worst case ({stats.pool_class})",
            "ok",
            None,
        ),
        GaugeTile(
            "Pending",
            str(pool.pending_requests),
            "requests waiting for a connection",
            "fail" if pool.pending_requests > 0 else "ok",
            _series(ctx, lambda s: s.pending, f"pending requests, last {window}"),
        ),
        GaugeTile(
            "Wait p95",
            bound_label(p95, wait.bounds) if p95 is not None else "no checkouts",
            f"{checkouts} checkout(s) {recently}; mean {duration(mean)} overall",
            "warn" if p95 is not None and p95 >= 0.1 else "ok",
            wait_spark,
        ),
    )
    settings = (
        f"pool_size {stats.size} · max_overflow {stats.max_overflow} · "
        f"timeout {duration(stats.timeout_s)} · recycle {duration(stats.recycle_s)} · "
        f"pre_ping {'on' if stats.pre_ping else 'off'} · echo {'on' if stats.echo else 'off'}"
    )
    facts = (
        Fact("checkouts", str(counters.checkouts)),
        Fact("connects", str(counters.connects)),
        Fact("invalidations", str(counters.invalidations_hard + counters.invalidations_soft)),
        Fact("pool timeouts", str(counters.timeouts)),
        Fact("GC reclaims", str(counters.gc_reclaimed)),
        Fact("statement errors", str(counters.statement_errors)),
        Fact("tracker drift", str(view.drift)),
        Fact("listener errors", str(counters.listener_errors)),
    )
    return GaugesPanel(tiles, settings, facts, window, freshness(view, server=False))


def _pct(part: int, whole: int) -> int | None:
    if whole <= 0:
        return None
    return max(0, min(100, round(100 * part / whole)))


# ---- held connections, grouped --------------------------------------------------------------

# Worst first: the state a group is labelled with when its connections differ.
_STATE_RANK = ("idle in transaction (aborted)", "idle in transaction", "active", "idle")
_STATUS_ORDER = {"fail": 0, "warn": 1, "unknown": 2, "ok": 3}
WAITING_FOR_PROBE = "waiting for the next probe"


@dataclass(frozen=True, slots=True)
class ConnectionRow:
    """One connection inside a holder group: the pool's side joined to the server's."""

    key: str  # stable per checkout: keeps an opened <details> open across polls
    slot: int
    pid: str
    request_id: str
    age: str
    status: str
    leak: str  # leak class label, "" when not suspected
    server_state: str
    wait_event: str
    xact_age: str
    query: str
    query_hidden: bool
    kill: str


@dataclass(frozen=True, slots=True)
class HolderGroup:
    """Connections held by one route at one checkout site: one fact, however many connections."""

    key: str
    route: str
    site_summary: str
    site: tuple[SiteFrame, ...]
    count: int
    ages: str  # "12.0 s" or "3.1 s to 12.0 s"
    state: str  # the worst server state among them
    status: str
    leak: str  # "idle in transaction" when suspected leaks, else ""
    rows: tuple[ConnectionRow, ...]


@dataclass(frozen=True, slots=True)
class HeldPanel:
    groups: tuple[HolderGroup, ...]
    summary: str
    note: str
    calm: bool
    fresh: str


def _state_when_unknown(view: MonitorView) -> str:
    if view.server.up is None:
        return "waiting for the first probe"
    if view.server.up is False:
        return "unknown (server down)"
    return WAITING_FOR_PROBE


def _sample_age(view: MonitorView) -> float:
    """Seconds between the server sample and the pool snapshot (server ages lag by this)."""
    sample = view.server.last_sample
    return max(0.0, view.pool.taken_at - sample.taken_at) if sample is not None else 0.0


def freshness(view: MonitorView, *, server: bool) -> str:
    """The age of a panel's data: pool data is read at render, server data at the last probe."""
    pool_part = f"pool as of {clock_time(view.pool.taken_at)}"
    if not server:
        return pool_part
    sample = view.server.last_sample
    if sample is None:
        return pool_part + " · no server sample yet"
    return pool_part + f" · server data {duration(_sample_age(view))} old"


def _connection_row(view: MonitorView, held: HeldConnection) -> ConnectionRow:
    conn, backend = held.connection, held.server
    leak = conn.leak_class
    lag = _sample_age(view)
    # Without a current server sample (or one older than this checkout) only the pool's side is known.
    server_state, wait_event, xact_age, query, kill = (
        _state_when_unknown(view), NOTHING, NOTHING, NOTHING, NOTHING,
    )  # fmt: skip
    if held.no_server_view is not None:
        server_state, wait_event = "no server session of its own", held.no_server_view
    if backend is not None:
        server_state = backend.state or NOTHING
        wait_event = wait_event_text(backend)
        # Ages were measured at the probe: add the time since, as the pool's ages are current.
        xact_age = (
            "no transaction" if backend.xact_age_s is None else duration(backend.xact_age_s + lag)
        )
        query = backend.query or NOTHING
        kill = (
            "no server timeout"
            if held.killed_by is None
            else f"{duration(max(0.0, (held.killed_in_s or 0.0) - lag))} ({held.killed_by})"
        )
    return ConnectionRow(
        key=f"held-{conn.slot_id}-{conn.checkouts}",
        slot=conn.slot_id,
        # Behind a pooler the driver's pid is the pooler's key: show the joined one.
        pid=pid_text(held.server_pid if view.pooler and view.pooler.detected else conn.pid),
        request_id=request_id_label(conn.holder),
        age=duration(conn.held_for_s),
        status=LEAK_STATUS[leak] if leak else "ok",
        leak=_leak_label(leak, backend),
        server_state=server_state,
        wait_event=wait_event,
        xact_age=xact_age,
        query=query,
        query_hidden=backend.query_hidden if backend is not None else False,
        kill=kill,
    )


def _leak_label(leak: LeakClass | None, backend: Backend | None) -> str:
    """The leak's class; one that outlived its owner also says what the server sees it do."""
    if leak is None:
        return ""
    if leak is LeakClass.OUTLIVED_OWNER and backend is not None and backend.state:
        return f"{LEAK_LABELS[leak]}, {backend.state}"
    return LEAK_LABELS[leak]


def _age_range(ages: Sequence[float | None]) -> str:
    known = [age for age in ages if age is not None]
    if not known:
        return NOTHING
    low, high = min(known), max(known)
    if duration(low) == duration(high):
        return duration(high)
    return f"{duration(low)} to {duration(high)}"


def _worst_state(states: Sequence[str]) -> str:
    for state in _STATE_RANK:
        if state in states:
            return state
    return states[0] if states else NOTHING


def holder_groups(
    view: MonitorView, held: Sequence[HeldConnection], ctx: RenderContext
) -> tuple[HolderGroup, ...]:
    """Held connections grouped by (route, checkout site), the worst and oldest group first."""
    by_key: dict[tuple[str, str], list[HeldConnection]] = {}
    sites: dict[tuple[str, str], tuple[SiteFrame, ...]] = {}
    for item in held:
        site = site_frames(item.connection.site, ctx.cwd)
        key = (holder_label(item.connection.holder), site_summary(site))
        by_key.setdefault(key, []).append(item)
        sites.setdefault(key, site)
    ranked: list[tuple[int, float, HolderGroup]] = []
    for (route, summary), members in by_key.items():
        rows = tuple(_connection_row(view, member) for member in members)
        status = min((row.status for row in rows), key=lambda s: _STATUS_ORDER.get(s, 2))
        leaks = [row.leak for row in rows if row.leak]
        ages = [m.connection.held_for_s for m in members]
        group = HolderGroup(
            key=f"group-{route}-{summary}",
            route=route,
            site_summary=summary,
            site=sites[(route, summary)],
            count=len(rows),
            ages=_age_range(ages),
            state=_worst_state([row.server_state for row in rows]),
            status=status,
            leak=leaks[0] if leaks else "",
            rows=rows,
        )
        oldest = max((age or 0.0) for age in ages)
        ranked.append((_STATUS_ORDER.get(status, 2), -oldest, group))
    ranked.sort(key=lambda item: item[:2])
    return tuple(group for _, _, group in ranked)


def build_held(view: MonitorView, ctx: RenderContext) -> HeldPanel:
    """Checked-out connections that are not suspected leaks (those are in the leaks panel)."""
    held = [h for h in view.held if h.connection.leak_class is None]
    suspects = len(view.held) - len(held)
    groups = holder_groups(view, held, ctx)
    total = len(view.held)
    if not total:
        summary = "Nothing checked out right now."
    else:
        summary = f"{total} of {view.pool_stats.max_connections} connection(s) checked out"
        if suspects:
            summary += f"; {suspects} of them under suspected leaks, above"
    note = (
        "a connection still held when its owner finished is a leak; one held longer than "
        f"{duration(view.pool.leak_threshold_s)} is a long hold, a suspected leak once unused "
        "that long or held past its ceiling"
    )
    return HeldPanel(groups, summary, note, not groups, freshness(view, server=True))


# ---- leaks -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeakClassCount:
    label: str
    status: str  # the class's severity while it has current suspects, else ok
    current: int
    total: int


@dataclass(frozen=True, slots=True)
class EndedGroup:
    """Leaks that ended (or connections the GC reclaimed) at one route and site, in the window."""

    key: str
    route: str
    site_summary: str
    site: tuple[SiteFrame, ...]
    outcome: str
    status: str
    count: int
    held: str  # range of how long they were held
    when: str  # the last one, "ago"


@dataclass(frozen=True, slots=True)
class LeaksPanel:
    by_class: tuple[LeakClassCount, ...]
    current: tuple[HolderGroup, ...]
    suspects: int
    ended: tuple[EndedGroup, ...]
    gc_reclaims: tuple[EndedGroup, ...]
    gc_total: int
    earlier: int  # ended or reclaimed before the window: counted, not listed
    threshold: str
    window: str
    calm: bool
    fresh: str


_OUTCOMES = {
    "returned": "returned to the pool",
    "gc_reclaimed": "reclaimed by the garbage collector",
    "invalidated": "invalidated",
    "detached": "detached from the pool",
}


def _ended_groups(
    items: Sequence[tuple[str, tuple[SiteFrame, ...], str, str, float, float]], now: float
) -> tuple[EndedGroup, ...]:
    """(route, site, outcome, status, held_s, at) records grouped by route, site and outcome."""
    by_key: dict[
        tuple[str, str, str], list[tuple[str, tuple[SiteFrame, ...], str, str, float, float]]
    ] = {}
    for item in items:
        by_key.setdefault((item[0], site_summary(item[1]), item[2]), []).append(item)
    groups = []
    for (route, summary, outcome), members in by_key.items():
        groups.append(
            EndedGroup(
                key=f"ended-{route}-{summary}-{outcome}",
                route=route,
                site_summary=summary,
                site=members[0][1],
                outcome=outcome,
                status=members[0][3],
                count=len(members),
                held=_age_range([m[4] for m in members]),
                when=ago(max(m[5] for m in members), now),
            )
        )
    return tuple(groups)


def build_leaks(view: MonitorView, ctx: RenderContext) -> LeaksPanel:
    pool, now = view.pool, view.pool.taken_at
    cutoff = now - view.verdict_window_s
    current_by_class = {
        cls: sum(1 for leak in pool.leaks if leak.leak_class is cls) for cls in LeakClass
    }
    by_class = tuple(
        LeakClassCount(
            LEAK_LABELS[cls],
            LEAK_STATUS[cls] if current_by_class[cls] else "ok",
            current_by_class[cls],
            pool.counters.leaks_by_class.get(cls.value, 0),
        )
        for cls in LeakClass
    )
    suspects = [h for h in view.held if h.connection.leak_class is not None]
    ended_items = []
    earlier = 0
    for leak in pool.resolved_leaks:
        how = leak.how_resolved or "resolved"
        if how == "gc_reclaimed":
            continue  # listed with the garbage collector's reclaims
        if leak.resolved_at is None or leak.resolved_at < cutoff:
            earlier += 1
            continue
        ended_items.append(
            (
                holder_label(leak.holder),
                site_frames(leak.site, ctx.cwd),
                f"{LEAK_LABELS[leak.leak_class]}, {_OUTCOMES.get(how, how.replace('_', ' '))}",
                "ok" if how == "returned" else "warn",
                leak.held_for_s,
                leak.resolved_at,
            )
        )
    gc_items = []
    for reclaim in pool.gc_reclaims:
        if reclaim.at < cutoff:
            earlier += 1
            continue
        gc_items.append(
            (
                holder_label(reclaim.holder),
                site_frames(reclaim.site, ctx.cwd),
                "reclaimed by the garbage collector",
                "fail",
                reclaim.held_for_s,
                reclaim.at,
            )
        )
    current = holder_groups(view, suspects, ctx)
    ended = _ended_groups(ended_items, now)
    reclaims = _ended_groups(gc_items, now)
    return LeaksPanel(
        by_class=by_class,
        current=current,
        suspects=len(suspects),
        ended=ended,
        gc_reclaims=reclaims,
        gc_total=pool.counters.gc_reclaimed,
        earlier=earlier,
        threshold=duration(pool.leak_threshold_s),
        window=span(view.verdict_window_s),
        calm=not (current or ended or reclaims),
        fresh=freshness(view, server=bool(current)),
    )


# ---- pool timeouts ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimeoutHolderGroup:
    route: str
    site_summary: str
    count: int
    held: str


@dataclass(frozen=True, slots=True)
class TimeoutRow:
    """Timeouts of one waiter (route and site) in the window; holders as at the last one."""

    key: str
    waiter: str
    request_id: str
    site_summary: str
    site: tuple[SiteFrame, ...]
    count: int
    waited: str
    when: str  # the last one
    holders: tuple[TimeoutHolderGroup, ...]
    holders_total: int


@dataclass(frozen=True, slots=True)
class TimeoutsPanel:
    rows: tuple[TimeoutRow, ...]
    total: int
    recent: int
    window: str
    calm: bool
    fresh: str


def _timeout_holders(
    record: PoolTimeoutRecord, ctx: RenderContext
) -> tuple[TimeoutHolderGroup, ...]:
    by_key: dict[tuple[str, str], list[float | None]] = {}
    for holder in record.holders:
        key = (holder_label(holder.holder), site_summary(site_frames(holder.site, ctx.cwd)))
        by_key.setdefault(key, []).append(holder.held_for_s)
    groups = [
        TimeoutHolderGroup(route, summary, len(ages), _age_range(ages))
        for (route, summary), ages in by_key.items()
    ]
    groups.sort(key=lambda g: -g.count)
    return tuple(groups)


def build_timeouts(view: MonitorView, ctx: RenderContext) -> TimeoutsPanel:
    now = view.pool.taken_at
    cutoff = now - view.verdict_window_s
    recent = [record for record in view.pool.timeouts if record.at >= cutoff]
    by_waiter: dict[tuple[str, str], list[PoolTimeoutRecord]] = {}
    for record in recent:  # most recent first
        site = site_frames(record.site, ctx.cwd)
        key = (holder_label(record.waiter), site_summary(site) if site else "site not captured")
        by_waiter.setdefault(key, []).append(record)
    rows = []
    for (waiter, summary), records in by_waiter.items():
        last = records[0]
        rows.append(
            TimeoutRow(
                key=f"timeout-{waiter}-{summary}",
                waiter=waiter,
                request_id=request_id_label(last.waiter),
                site_summary=summary,
                site=site_frames(last.site, ctx.cwd),
                count=len(records),
                waited=_age_range([r.waited_s for r in records]),
                when=ago(last.at, now),
                holders=_timeout_holders(last, ctx),
                holders_total=len(last.holders),
            )
        )
    return TimeoutsPanel(
        tuple(rows),
        view.pool.counters.timeouts,
        len(recent),
        span(view.verdict_window_s),
        not rows,
        freshness(view, server=False),
    )


# ---- slow queries ----------------------------------------------------------------------------

MAX_SLOW_ROWS = 10


@dataclass(frozen=True, slots=True)
class SlowRow:
    statement: str
    count: int
    total: str
    max: str
    mean: str
    last_route: str
    last_seen: str
    site_summary: str
    site: tuple[SiteFrame, ...]
    key: str


@dataclass(frozen=True, slots=True)
class SlowPanel:
    rows: tuple[SlowRow, ...]
    threshold: str
    total: int
    hidden: int  # shapes not listed: beyond MAX_SLOW_ROWS or last seen before the window
    window: str
    calm: bool
    fresh: str


def build_slow(view: MonitorView, ctx: RenderContext) -> SlowPanel:
    now = view.pool.taken_at
    cutoff = now - view.verdict_window_s
    recent = [g for g in view.pool.slow_queries if g.last_seen_at >= cutoff]
    rows = []
    for group in recent[:MAX_SLOW_ROWS]:
        site = site_frames(group.last_site, ctx.cwd)
        rows.append(
            SlowRow(
                statement=group.statement,
                count=group.count,
                total=duration(group.total_s),
                max=duration(group.max_s),
                mean=duration(group.total_s / group.count) if group.count else NOTHING,
                last_route=group.last_route or NOTHING,
                last_seen=ago(group.last_seen_at, now),
                site_summary=site_summary(site) if site else "site not captured",
                site=site,
                key=f"slow-{group.fingerprint}",
            )
        )
    return SlowPanel(
        tuple(rows),
        duration(view.pool.slow_query_s),
        view.pool.counters.slow_queries,
        len(view.pool.slow_queries) - len(rows),
        span(view.verdict_window_s),
        not rows,
        freshness(view, server=False),
    )


# ---- rules and probe -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleRow:
    rule: str
    status: str
    status_label: str
    why: str
    since: str  # "since 10:23:35 UTC, holds now" / "cleared 20 s ago, OK at ..."; "" when OK
    evidence: tuple[str, ...] = ()  # e.g. the requests that held two connections, with sites


@dataclass(frozen=True, slots=True)
class RulesPanel:
    rows: tuple[RuleRow, ...]
    summary: str
    calm: bool
    window: str
    fresh: str = ""


def verdict_since(verdict: RuleVerdict, now: float, window_s: float) -> str:
    """When a failing verdict began and whether it still holds or clears by itself, and when."""
    if verdict.status not in ("warn", "fail") or verdict.since is None:
        return ""
    began = f"since {clock_time(verdict.since)}"
    if verdict.holds_now or verdict.last_held_at is None:
        return f"{began}, still now"
    clears = clock_time(verdict.last_held_at + window_s)
    return f"{began}; last seen {ago(verdict.last_held_at, now)}, OK at {clears} unless it recurs"


def _multi_evidence(view: MonitorView, ctx: RenderContext) -> tuple[str, ...]:
    cutoff = view.pool.taken_at - view.verdict_window_s
    lines: dict[str, int] = {}
    for record in view.pool.multi_connection_requests:
        if record.at < cutoff:
            continue
        taken: dict[str, int] = {}
        for site in record.sites:
            summary = site_summary(site_frames(site, ctx.cwd))
            taken[summary] = taken.get(summary, 0) + 1
        where = ", ".join(f"{s} (x{n})" if n > 1 else s for s, n in taken.items())
        line = f"{record.route} held {record.connections} at once" + (
            f", taken at {where}" if where else ""
        )
        lines[line] = lines.get(line, 0) + 1
    return tuple(
        line + (f" (x{count})" if count > 1 else "") for line, count in list(lines.items())[:5]
    )


def build_rules(view: MonitorView, ctx: RenderContext) -> RulesPanel:
    now, window = view.pool.taken_at, view.verdict_window_s
    rows = tuple(
        RuleRow(
            rule.rule,
            rule.status,
            STATUS_LABELS.get(rule.status, rule.status),
            rule.why,
            verdict_since(rule, now, window),
            _multi_evidence(view, ctx) if rule.rule == "One session per request" else (),
        )
        for rule in view.rules
    )
    failing = sum(1 for row in rows if row.status == "fail")
    warning = sum(1 for row in rows if row.status == "warn")
    if failing or warning:
        summary = f"{len(rows) - failing - warning} ok, {warning} warning, {failing} failing"
    else:
        summary = f"All {len(rows)} rules hold"
    summary += f" (verdicts look back {span(window)})"
    fresh = freshness(view, server=True)
    return RulesPanel(rows, summary, not (failing or warning), span(window), fresh)


@dataclass(frozen=True, slots=True)
class ProbePanel:
    status: str
    status_label: str
    facts: tuple[Fact, ...]
    last_error: str | None
    hidden_note: str | None
    line: str = ""  # the whole panel in one line while all is well

    @property
    def calm(self) -> bool:
        return self.status == "ok" and not self.hidden_note


def build_probe(view: MonitorView, ctx: RenderContext) -> ProbePanel:
    server, now = view.server, view.pool.taken_at
    if server.up is None:
        status, label = "unknown", "Waiting"
    elif server.up:
        status, label = "ok", "Up"
    else:
        status, label = "fail", "Down"
    durations = server.probe_durations_s
    facts = (
        Fact("last success", ago(server.last_success_at, now)),
        Fact("last duration", duration(durations[-1]) if durations else NOTHING),
        Fact("slowest recent", duration(max(durations)) if durations else NOTHING),
        Fact("probes", str(server.probes_total)),
        Fact("errors", str(server.errors_total)),
        Fact("skipped (previous still running)", str(server.skipped_total)),
    )
    last_error = None
    if server.last_error is not None:
        last_error = f"{server.last_error} ({ago(server.last_error_at, now)})"
    hidden_note = incomplete_note(server)
    line = (
        f"last success {ago(server.last_success_at, now)}, "
        f"{duration(durations[-1]) if durations else NOTHING}; "
        f"{server.probes_total} probes, {server.errors_total} errors"
    )
    return ProbePanel(status, label, facts, last_error, hidden_note, line)


# ---- demo buttons ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoButton:
    path: str
    title: str
    explanation: str
    name: str  # last path segment, for tests and CSS hooks


def build_demo(scenarios: object) -> tuple[DemoButton, ...]:
    """Buttons for `app.state.demo_scenarios` (path, title, explanation); odd entries skipped."""
    if not isinstance(scenarios, list | tuple):
        return ()
    buttons = []
    for entry in scenarios:
        if not isinstance(entry, list | tuple) or len(entry) != 3:
            continue
        path, title, explanation = (str(part) for part in entry)
        # Only same-app absolute paths become hx-post targets.
        if not path.startswith("/") or path.startswith("//"):
            continue
        buttons.append(DemoButton(path, title, explanation, path.rstrip("/").rsplit("/", 1)[-1]))
    return tuple(buttons)


# ---- registry --------------------------------------------------------------------------------

Builder = Callable[[MonitorView, RenderContext], object]

# Panel name -> builder; each has templates/partials/_<name>.html and /monitor/partials/<name>.
BUILDERS: dict[str, Builder] = {
    "status": build_status,
    "gauges": build_gauges,
    "held": build_held,
    "leaks": build_leaks,
    "rules": build_rules,
    "probe": build_probe,
    "server": build_server,
    "blocking": build_blocking,
    "slow": build_slow,
    "timeouts": build_timeouts,
    "orphans": build_orphans,
    "pgbouncer": build_pgbouncer,
}
PANEL_NAMES: tuple[str, ...] = tuple(BUILDERS)


def build_panel(name: str, view: MonitorView, ctx: RenderContext) -> object:
    return BUILDERS[name](view, ctx)
