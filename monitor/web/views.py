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

from monitor.state.records import LeakClass
from monitor.state.view import MonitorView
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
    sparkline,
    wait_event_text,
    worst_status,
)
from monitor.web.history import GaugeSample
from monitor.web.render_context import RenderContext
from monitor.web.server_panels import build_blocking, build_orphans, build_server

LEAK_LABELS = {
    LeakClass.IDLE_IN_TRANSACTION: "idle in transaction",
    LeakClass.IDLE: "idle but held",
    LeakClass.ACTIVE: "active long query",
    LeakClass.UNKNOWN: "no server data yet",
}
LEAK_STATUS = {
    LeakClass.IDLE_IN_TRANSACTION: "fail",
    LeakClass.IDLE: "warn",
    LeakClass.ACTIVE: "warn",
    LeakClass.UNKNOWN: "warn",
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
    database: str
    url_source: str
    sslmode: str
    pool: str
    server_version: str
    updated: str
    workers: str = ""  # with several worker processes: how many, and which one answered


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
    if view.server.up is False:
        status = "fail"
    return StatusPanel(
        banner=server_banner(view),
        status=status,
        status_label=STATUS_LABELS.get(status, status),
        database=view.app.database,
        url_source=view.app.url_source,
        sslmode=view.app.sslmode or "not set",
        pool=f"{view.pool.pool_name} ({view.pool_stats.pool_class})",
        server_version=f"PostgreSQL {sample.settings.server_version}" if sample else NOTHING,
        updated=clock_time(view.pool.taken_at),
        workers=_workers_text(view),
    )


def _workers_text(view: MonitorView) -> str:
    group = view.group
    if group is None:
        return ""
    text = f"{len(group.workers)} worker(s), answered by pid {group.answered_by}"
    if group.stale_workers:
        text += f", {group.stale_workers} silent"
    return text


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
    return GaugesPanel(tiles, settings, facts, window)


def _pct(part: int, whole: int) -> int | None:
    if whole <= 0:
        return None
    return max(0, min(100, round(100 * part / whole)))


# ---- held connections ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeldRow:
    key: str  # stable per checkout: keeps an opened <details> open across polls
    slot: int
    pid: str
    route: str
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
    site_summary: str
    site: tuple[SiteFrame, ...]
    worker: str = ""  # the worker process's pid, with several workers


@dataclass(frozen=True, slots=True)
class HeldPanel:
    rows: tuple[HeldRow, ...]
    summary: str
    note: str
    show_worker: bool = False  # several worker processes: a column says whose each one is


def _state_when_unknown(view: MonitorView) -> str:
    if view.server.up is None:
        return "waiting for probe"
    if view.server.up is False:
        return "unknown (server down)"
    return "not seen yet"


def build_held(view: MonitorView, ctx: RenderContext) -> HeldPanel:
    rows = []
    for held in view.held:
        conn, backend = held.connection, held.server
        leak = conn.leak_class
        site = site_frames(conn.site, ctx.cwd)
        # Without a current server sample only the pool's side is known.
        server_state, wait_event, xact_age, query, kill = (
            _state_when_unknown(view), NOTHING, NOTHING, NOTHING, NOTHING,
        )  # fmt: skip
        if backend is not None:
            server_state = backend.state or NOTHING
            wait_event = wait_event_text(backend)
            xact_age = (
                "no transaction" if backend.xact_age_s is None else duration(backend.xact_age_s)
            )
            query = backend.query or NOTHING
            kill = (
                "no server timeout"
                if held.killed_by is None
                else f"{duration(held.killed_in_s)} ({held.killed_by})"
            )
        rows.append(
            HeldRow(
                key=f"held-{conn.worker or 0}-{conn.slot_id}-{conn.checkouts}",
                slot=conn.slot_id,
                pid=pid_text(conn.pid),
                route=holder_label(conn.holder),
                request_id=request_id_label(conn.holder),
                age=duration(conn.held_for_s),
                status=LEAK_STATUS[leak] if leak else "ok",
                leak=LEAK_LABELS[leak] if leak else "",
                server_state=server_state,
                wait_event=wait_event,
                xact_age=xact_age,
                query=query,
                query_hidden=backend.query_hidden if backend is not None else False,
                kill=kill,
                site_summary=site_summary(site),
                site=site,
                worker=pid_text(conn.worker),
            )
        )
    count = len(rows)
    summary = (
        f"{count} of {view.pool_stats.max_connections} connection(s) checked out"
        if count
        else "no connection checked out"
    )
    note = (
        f"a connection held longer than {duration(view.pool.leak_threshold_s)} is a suspected leak"
    )
    return HeldPanel(tuple(rows), summary, note, show_worker=view.group is not None)


# ---- leaks -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeakClassCount:
    label: str
    status: str  # the class's severity while it has current suspects, else ok
    current: int
    total: int


@dataclass(frozen=True, slots=True)
class LeakRow:
    key: str
    leak: str
    status: str
    slot: int
    pid: str
    route: str
    request_id: str
    held: str
    when: str  # detected ago, or resolved ago for history rows
    outcome: str  # "" for current leaks, "returned", "reclaimed by the GC", ...
    site_summary: str
    site: tuple[SiteFrame, ...]


@dataclass(frozen=True, slots=True)
class GcRow:
    key: str
    when: str
    slot: int
    route: str
    held: str
    site_summary: str
    site: tuple[SiteFrame, ...]


@dataclass(frozen=True, slots=True)
class LeaksPanel:
    by_class: tuple[LeakClassCount, ...]
    current: tuple[LeakRow, ...]
    resolved: tuple[LeakRow, ...]
    gc_reclaims: tuple[GcRow, ...]
    gc_total: int
    threshold: str


_OUTCOMES = {
    "returned": "returned to the pool",
    "gc_reclaimed": "reclaimed by the garbage collector",
    "invalidated": "invalidated",
    "detached": "detached from the pool",
}


def build_leaks(view: MonitorView, ctx: RenderContext) -> LeaksPanel:
    pool, now = view.pool, view.pool.taken_at
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
    current = []
    for leak in pool.leaks:
        site = site_frames(leak.site, ctx.cwd)
        current.append(
            LeakRow(
                key=f"leak-{leak.slot_id}-{leak.detected_at:.3f}",
                leak=LEAK_LABELS[leak.leak_class],
                status=LEAK_STATUS[leak.leak_class],
                slot=leak.slot_id,
                pid=pid_text(leak.pid),
                route=holder_label(leak.holder),
                request_id=request_id_label(leak.holder),
                held=duration(leak.held_for_s),
                when=ago(leak.detected_at, now),
                outcome="",
                site_summary=site_summary(site),
                site=site,
            )
        )
    resolved = []
    for leak in pool.resolved_leaks:
        site = site_frames(leak.site, ctx.cwd)
        how = leak.how_resolved or "resolved"
        resolved.append(
            LeakRow(
                key=f"resolved-{leak.slot_id}-{leak.resolved_at or 0.0:.3f}",
                leak=LEAK_LABELS[leak.leak_class],
                status="ok" if how == "returned" else "warn",
                slot=leak.slot_id,
                pid=pid_text(leak.pid),
                route=holder_label(leak.holder),
                request_id=request_id_label(leak.holder),
                held=duration(leak.held_for_s),
                when=ago(leak.resolved_at, now),
                outcome=_OUTCOMES.get(how, how.replace("_", " ")),
                site_summary=site_summary(site),
                site=site,
            )
        )
    gc_rows = []
    for reclaim in pool.gc_reclaims:
        site = site_frames(reclaim.site, ctx.cwd)
        gc_rows.append(
            GcRow(
                key=f"gc-{reclaim.slot_id}-{reclaim.at:.3f}",
                when=ago(reclaim.at, now),
                slot=reclaim.slot_id,
                route=holder_label(reclaim.holder),
                held=duration(reclaim.held_for_s),
                site_summary=site_summary(site),
                site=site,
            )
        )
    return LeaksPanel(
        by_class,
        tuple(current),
        tuple(resolved),
        tuple(gc_rows),
        pool.counters.gc_reclaimed,
        duration(pool.leak_threshold_s),
    )


# ---- pool timeouts ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimeoutHolder:
    slot: int
    pid: str
    route: str
    held: str
    site_summary: str


@dataclass(frozen=True, slots=True)
class TimeoutRow:
    when: str
    waited: str
    holders: tuple[TimeoutHolder, ...]


@dataclass(frozen=True, slots=True)
class TimeoutsPanel:
    rows: tuple[TimeoutRow, ...]
    total: int


def build_timeouts(view: MonitorView, ctx: RenderContext) -> TimeoutsPanel:
    now = view.pool.taken_at
    rows = tuple(
        TimeoutRow(
            when=ago(record.at, now),
            waited=duration(record.waited_s),
            holders=tuple(
                TimeoutHolder(
                    slot=holder.slot_id,
                    pid=pid_text(holder.pid),
                    route=holder_label(holder.holder),
                    held=duration(holder.held_for_s),
                    site_summary=site_summary(site_frames(holder.site, ctx.cwd)),
                )
                for holder in record.holders
            ),
        )
        for record in view.pool.timeouts
    )
    return TimeoutsPanel(rows, view.pool.counters.timeouts)


# ---- slow queries ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlowRow:
    statement: str
    count: int
    total: str
    max: str
    mean: str
    last_route: str
    last_seen: str


@dataclass(frozen=True, slots=True)
class SlowPanel:
    rows: tuple[SlowRow, ...]
    threshold: str
    total: int


def build_slow(view: MonitorView, ctx: RenderContext) -> SlowPanel:
    now = view.pool.taken_at
    rows = tuple(
        SlowRow(
            statement=group.statement,
            count=group.count,
            total=duration(group.total_s),
            max=duration(group.max_s),
            mean=duration(group.total_s / group.count) if group.count else NOTHING,
            last_route=group.last_route or NOTHING,
            last_seen=ago(group.last_seen_at, now),
        )
        for group in view.pool.slow_queries
    )
    return SlowPanel(rows, duration(view.pool.slow_query_s), view.pool.counters.slow_queries)


# ---- rules and probe -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleRow:
    rule: str
    status: str
    status_label: str
    why: str


@dataclass(frozen=True, slots=True)
class RulesPanel:
    rows: tuple[RuleRow, ...]
    summary: str


def build_rules(view: MonitorView, ctx: RenderContext) -> RulesPanel:
    rows = tuple(
        RuleRow(rule.rule, rule.status, STATUS_LABELS.get(rule.status, rule.status), rule.why)
        for rule in view.rules
    )
    failing = sum(1 for row in rows if row.status == "fail")
    warning = sum(1 for row in rows if row.status == "warn")
    summary = f"{len(rows) - failing - warning} ok, {warning} warning, {failing} failing"
    return RulesPanel(rows, summary)


@dataclass(frozen=True, slots=True)
class ProbePanel:
    status: str
    status_label: str
    facts: tuple[Fact, ...]
    last_error: str | None
    hidden_note: str | None


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
    hidden_note = None
    if server.hidden_queries:
        hidden_note = (
            f"{server.hidden_queries} session(s) hide their query text from the probe's role; "
            "grant it pg_read_all_stats to see them"
        )
    return ProbePanel(status, label, facts, last_error, hidden_note)


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
}
PANEL_NAMES: tuple[str, ...] = tuple(BUILDERS)


def build_panel(name: str, view: MonitorView, ctx: RenderContext) -> object:
    return BUILDERS[name](view, ctx)
