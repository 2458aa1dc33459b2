"""Pure view-model builders: a `MonitorView` in, already-formatted strings and numbers out.

Templates only loop and test; every unit, age and status label is decided here. No I/O, no clock.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from monitor.state.holders import Holder
from monitor.state.records import LeakClass
from monitor.state.server import (
    ACTIVITY_STATES,
    CLIENT_BACKEND,
    Backend,
    ServerSample,
    blocked_sessions,
    sessions_by_state,
)
from monitor.state.sites import Frame
from monitor.state.view import MonitorView
from monitor.web.history import DEFAULT_WINDOW_S, GaugeSample

NOTHING = "—"
STATUS_LABELS = {"ok": "OK", "warn": "Warning", "fail": "Failing", "unknown": "Unknown"}
_STATUS_RANK = {"ok": 0, "unknown": 1, "warn": 2, "fail": 3}
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
_ALWAYS_SHOWN_STATES = ("active", "idle", "idle in transaction")
SPARK_WIDTH = 120
SPARK_HEIGHT = 28
# A fresh history would otherwise squeeze its few samples into the right edge of ten minutes.
MIN_SHOWN_WINDOW_S = 60.0


# ---- formatting ------------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    """Human duration: "0.4 ms", "12 ms", "1.2 s", "2 min 05 s", "1 h 02 min", "3 d 4 h"."""
    if seconds is None or math.isnan(seconds):
        return NOTHING
    if math.isinf(seconds):
        return "∞"
    seconds = max(0.0, seconds)
    if seconds < 0.0001:
        return "< 0.1 ms"
    if seconds < 0.0095:
        return f"{seconds * 1000:.1f}".removesuffix(".0") + " ms"
    if seconds < 0.9995:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    whole = int(seconds + 0.5)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def ago(at: float | None, now: float, never: str = "never") -> str:
    """ "3.0 s ago" relative to `now` (both unix times); `never` when there is no instant."""
    if at is None:
        return never
    return f"{duration(now - at)} ago"


def clock_time(at: float) -> str:
    """UTC wall-clock time of a unix instant: the server's and the reader's zones may differ."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(at))


def percent(ratio: float | None) -> str:
    return NOTHING if ratio is None else f"{ratio:.0%}"


def bound_label(bound: float | None, finite_bounds: Sequence[float] = ()) -> str:
    """A histogram bucket bound as an estimate: "≤ 5 ms", or "> 10 s" for the +Inf bucket."""
    if bound is None:
        return NOTHING
    if math.isinf(bound):
        largest = max((b for b in finite_bounds if not math.isinf(b)), default=None)
        return f"> {duration(largest)}" if largest is not None else "unbounded"
    return f"≤ {duration(bound)}"


def short_path(filename: str, cwd: str = "") -> str:
    """A source path as a reader wants it: relative to the working directory or site-packages."""
    if cwd:
        prefix = cwd.rstrip(os.sep) + os.sep
        if filename.startswith(prefix):
            return filename[len(prefix) :]
    for marker in ("site-packages" + os.sep, "dist-packages" + os.sep):
        index = filename.rfind(marker)
        if index >= 0:
            return filename[index + len(marker) :]
    return filename


def quantile(bounds: Sequence[float], cumulative: Sequence[int], q: float) -> float | None:
    """Upper bound of the bucket holding quantile q of cumulative bucket counts (None if empty)."""
    if not cumulative or cumulative[-1] <= 0:
        return None
    rank = q * cumulative[-1]
    for bound, count in zip(bounds, cumulative, strict=False):
        if count >= rank:
            return bound
    return bounds[-1] if bounds else None


# ---- shared pieces ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteFrame:
    location: str  # "app/routes.py:42"
    function: str
    source: str


@dataclass(frozen=True, slots=True)
class Sparkline:
    """Inline SVG geometry: `line` for a polyline, `area` for the filled polygon under it."""

    line: str
    area: str
    width: int
    height: int
    title: str


@dataclass(frozen=True, slots=True)
class RenderContext:
    """What a builder needs besides the view: where paths are relative to, recent gauge samples."""

    cwd: str = ""
    samples: tuple[GaugeSample, ...] = ()
    samples_now: float = 0.0  # the history's clock at render time
    window_s: float = DEFAULT_WINDOW_S

    @property
    def shown_window_s(self) -> float:
        """The sparklines' time span: what the history holds, at least a minute, at most the window."""
        held = self.samples_now - self.samples[0].at if self.samples else 0.0
        return min(self.window_s, max(MIN_SHOWN_WINDOW_S, held))


def site_frames(site: Iterable[Frame], cwd: str = "") -> tuple[SiteFrame, ...]:
    return tuple(
        SiteFrame(f"{short_path(f.filename, cwd)}:{f.lineno}", f.function, f.source) for f in site
    )


def site_summary(site: Sequence[SiteFrame]) -> str:
    """The first frame with a real source file: generated code (`<string>`) says nothing."""
    for frame in site:
        if not frame.location.startswith("<"):
            return frame.location
    return site[0].location if site else "site not captured"


def holder_label(holder: Holder | None) -> str:
    if holder is None:
        return NOTHING
    return holder.route if holder.kind == "request" else f"{holder.route} (no request)"


def request_id_label(holder: Holder | None) -> str:
    return (holder.request_id if holder is not None else None) or NOTHING


def worst_status(statuses: Iterable[str]) -> str:
    return max(statuses, key=lambda s: _STATUS_RANK.get(s, 1), default="ok")


def sparkline(
    points: Sequence[tuple[float, float]],
    *,
    window_s: float,
    now: float,
    title: str,
    width: int = SPARK_WIDTH,
    height: int = SPARK_HEIGHT,
) -> Sparkline | None:
    """Points (time, value) placed by age across the window, scaled to the largest value."""
    if len(points) < 2 or window_s <= 0:
        return None
    top = max(value for _, value in points)
    scale = top if top > 0 else 1.0
    pad = 2.0
    coords = []
    for at, value in points:
        x = width * (1.0 - min(max(now - at, 0.0), window_s) / window_s)
        y = height - pad - (max(value, 0.0) / scale) * (height - 2 * pad)
        coords.append(f"{x:.1f},{y:.1f}")
    first_x = coords[0].split(",")[0]
    last_x = coords[-1].split(",")[0]
    line = " ".join(coords)
    area = f"{first_x},{height} {line} {last_x},{height}"
    return Sparkline(line, area, width, height, title)


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
class Fact:
    label: str
    value: str


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


@dataclass(frozen=True, slots=True)
class HeldPanel:
    rows: tuple[HeldRow, ...]
    summary: str
    note: str


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
            wait_event = _wait_event(backend)
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
                key=f"held-{conn.slot_id}-{conn.checkouts}",
                slot=conn.slot_id,
                pid=_pid(conn.pid),
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
    return HeldPanel(tuple(rows), summary, note)


def _pid(pid: int | None) -> str:
    return NOTHING if pid is None else str(pid)


def _wait_event(backend: Backend) -> str:
    if backend.wait_event_type and backend.wait_event:
        return f"{backend.wait_event_type}: {backend.wait_event}"
    return backend.wait_event or backend.wait_event_type or NOTHING


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
                pid=_pid(leak.pid),
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
                pid=_pid(leak.pid),
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
                    pid=_pid(holder.pid),
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


# ---- server sessions and capacity ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CountRow:
    label: str
    count: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CapacityView:
    used: str  # "12 of 97 connections"
    used_pct: int | None
    pool_share: str
    warning: str | None
    status: str
    status_label: str


@dataclass(frozen=True, slots=True)
class ServerPanel:
    available: bool  # a sample exists (possibly stale)
    stale: str | None  # why the numbers are old, when they are
    database: str
    by_state: tuple[CountRow, ...]
    by_application: tuple[CountRow, ...]
    capacity: CapacityView
    settings: tuple[Fact, ...]


def _capacity(view: MonitorView) -> CapacityView:
    cap = view.capacity
    if cap.server_available is None or cap.server_sessions is None:
        return CapacityView(
            "unknown until the first probe", None, f"this pool may open {cap.pool_max}",
            None, "unknown", STATUS_LABELS["unknown"],
        )  # fmt: skip
    status = "ok"
    if (cap.pool_share_ratio or 0) > 1 or (cap.used_ratio or 0) >= 0.9:
        status = "fail"
    elif cap.warning:
        status = "warn"
    return CapacityView(
        used=(
            f"{cap.server_sessions} of {cap.server_available} connections in use, "
            f"{max(0, cap.server_available - cap.server_sessions)} free"
        ),
        used_pct=None if cap.used_ratio is None else max(0, min(100, round(cap.used_ratio * 100))),
        pool_share=(
            f"this pool may open {cap.pool_max} ({percent(cap.pool_share_ratio)} of the server)"
        ),
        warning=cap.warning,
        status=status,
        status_label=STATUS_LABELS[status],
    )


def _client_backends(sample: ServerSample) -> list[Backend]:
    return [b for b in sample.backends if b.backend_type == CLIENT_BACKEND]


def build_server(view: MonitorView, ctx: RenderContext) -> ServerPanel:
    sample = view.server.last_sample
    capacity = _capacity(view)
    if sample is None:
        return ServerPanel(False, None, NOTHING, (), (), capacity, ())
    stale = None
    if not view.server.up:
        stale = (
            f"stale: last successful probe {ago(view.server.last_success_at, view.pool.taken_at)}"
        )
    counts = sessions_by_state(sample)
    by_state = tuple(
        CountRow(state, count)
        for (_, state), count in sorted(
            counts.items(),
            key=lambda item: (
                ACTIVITY_STATES.index(item[0][1]) if item[0][1] in ACTIVITY_STATES else 99
            ),
        )
        if count > 0 or state in _ALWAYS_SHOWN_STATES
    )
    apps: dict[str, dict[str, int]] = {}
    for backend in _client_backends(sample):
        name = backend.application_name or "(no application_name)"
        states = apps.setdefault(name, {})
        state = backend.state or "unknown"
        states[state] = states.get(state, 0) + 1
    by_application = tuple(
        CountRow(name, sum(states.values()), ", ".join(f"{n} {s}" for s, n in states.items()))
        for name, states in sorted(apps.items(), key=lambda item: -sum(item[1].values()))
    )
    s = sample.settings
    settings = (
        Fact("server", f"PostgreSQL {s.server_version}"),
        Fact("max_connections", str(s.max_connections)),
        Fact("reserved", str(s.superuser_reserved_connections + s.reserved_connections)),
        Fact("statement_timeout", _timeout(s.statement_timeout_s)),
        Fact("idle_in_transaction_session_timeout", _timeout(s.idle_in_transaction_session_timeout_s)),
        Fact("idle_session_timeout", _timeout(s.idle_session_timeout_s)),
        Fact("transaction_timeout", _timeout(s.transaction_timeout_s)),
    )  # fmt: skip
    return ServerPanel(True, stale, sample.database, by_state, by_application, capacity, settings)


def _timeout(seconds: float | None) -> str:
    return "off" if seconds is None else duration(seconds)


# ---- blocked and blocking sessions -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionRow:
    pid: str
    application: str
    user: str
    state: str
    wait_event: str
    age: str  # how long in this state (blocked) or in the transaction (blocker)
    blocked_by: str
    owner: str  # the pool holder's route when the backend is one of our connections
    query: str


@dataclass(frozen=True, slots=True)
class BlockingPanel:
    available: bool
    blocked: tuple[SessionRow, ...]
    blocking: tuple[SessionRow, ...]


def _owners(view: MonitorView) -> dict[int, str]:
    return {
        h.connection.pid: holder_label(h.connection.holder)
        for h in view.held
        if h.connection.pid is not None
    }


def _session_row(backend: Backend, owners: dict[int, str], age: float | None) -> SessionRow:
    return SessionRow(
        pid=str(backend.pid),
        application=backend.application_name or NOTHING,
        user=backend.usename or NOTHING,
        state=backend.state or NOTHING,
        wait_event=_wait_event(backend),
        age=duration(age),
        blocked_by=", ".join(str(pid) for pid in backend.blocked_by) or NOTHING,
        owner=owners.get(backend.pid, NOTHING),
        query=backend.query or NOTHING,
    )


def build_blocking(view: MonitorView, ctx: RenderContext) -> BlockingPanel:
    sample = view.server.last_sample if view.server.up else None
    if sample is None:
        return BlockingPanel(False, (), ())
    owners = _owners(view)
    blocked = blocked_sessions(sample)
    blocker_pids = sorted({pid for backend in blocked for pid in backend.blocked_by})
    by_pid = {backend.pid: backend for backend in sample.backends}
    blocking = []
    for pid in blocker_pids:
        backend = by_pid.get(pid)
        if backend is None:  # in another database: only the pid is known
            blocking.append(
                SessionRow(str(pid), NOTHING, NOTHING, "other database", NOTHING, NOTHING,
                           NOTHING, owners.get(pid, NOTHING), NOTHING)
            )  # fmt: skip
        else:
            blocking.append(_session_row(backend, owners, backend.xact_age_s))
    return BlockingPanel(
        True,
        tuple(_session_row(b, owners, b.state_age_s) for b in blocked),
        tuple(blocking),
    )


# ---- orphans and phantoms --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PhantomRow:
    slot: int
    pid: str
    connected: str
    checked_out: str
    route: str


@dataclass(frozen=True, slots=True)
class OrphansPanel:
    available: bool
    orphans: tuple[SessionRow, ...]
    phantoms: tuple[PhantomRow, ...]


def build_orphans(view: MonitorView, ctx: RenderContext) -> OrphansPanel:
    if not view.server.up:
        return OrphansPanel(False, (), ())
    now = view.pool.taken_at
    return OrphansPanel(
        True,
        tuple(_session_row(b, {}, b.backend_age_s) for b in view.orphans),
        tuple(
            PhantomRow(
                slot=c.slot_id,
                pid=_pid(c.pid),
                connected=ago(c.connected_at, now),
                checked_out="yes" if c.checked_out else "no",
                route=holder_label(c.holder),
            )
            for c in view.phantoms
        ),
    )


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
