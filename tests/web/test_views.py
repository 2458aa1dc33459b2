"""Pure view-model builders on literal records: formatting, degraded server, leaks, gauges, history."""

from __future__ import annotations

import dataclasses
import math

import pytest

from monitor.state.histogram import HistogramSnapshot
from monitor.state.holders import Holder
from monitor.state.records import (
    ConnectionView,
    GcReclaim,
    LeakClass,
    LeakRecord,
    PoolCounters,
    PoolSnapshot,
    PoolStats,
    PoolTimeoutRecord,
    SlowQueryGroup,
)
from monitor.state.server import Backend, ServerHealthSnapshot, ServerSample, ServerSettings
from monitor.state.sites import Frame
from monitor.state.view import AppInfo, MonitorView, build_view
from monitor.web import views
from monitor.web.history import GaugeHistory, GaugeSample

NOW = 2_000_000_000.0  # wall clock of every literal snapshot
BOUNDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, math.inf)
SITE = (
    Frame("/srv/app/routes.py", 42, "read_items", "with engine.connect() as conn:"),
    Frame("/srv/app/main.py", 7, "handler", "return read_items()"),
)
HOLDER = Holder("request", "GET /items/{item_id}", "req-1")


def histogram(cumulative: tuple[int, ...] = (0,) * 10, total: float = 0.0) -> HistogramSnapshot:
    return HistogramSnapshot(BOUNDS, cumulative, total, cumulative[-1])


def counters(**overrides: object) -> PoolCounters:
    values: dict[str, object] = {
        "checkouts": 0, "connects": 0, "invalidations_hard": 0, "invalidations_soft": 0,
        "closes": 0, "detaches": 0, "gc_reclaimed": 0, "timeouts": 0, "slow_queries": 0,
        "statement_errors": 0, "multi_connection_requests": 0, "leaks_by_class": {},
        "listener_errors": 0,
    }  # fmt: skip
    values.update(overrides)
    return PoolCounters(**values)  # type: ignore[arg-type]


def connection(slot: int = 1, pid: int | None = 101, held_s: float | None = 5.0) -> ConnectionView:
    return ConnectionView(
        slot_id=slot, pid=pid, connected_at=NOW - 60, checked_out=held_s is not None,
        checked_out_at=None if held_s is None else NOW - held_s, held_for_s=held_s,
        holder=HOLDER if held_s is not None else None, site=SITE if held_s is not None else (),
        checkouts=3, leak_class=None, history=(),
    )  # fmt: skip


def pool(**overrides: object) -> PoolSnapshot:
    values: dict[str, object] = {
        "pool_name": "default", "taken_at": NOW, "leak_threshold_s": 10.0, "slow_query_s": 0.5,
        "connections": (), "checked_out": 0, "pending_requests": 0, "counters": counters(),
        "wait_time": histogram(), "use_time": histogram(), "create_time": histogram(),
        "leaks": (), "resolved_leaks": (), "gc_reclaims": (), "timeouts": (), "slow_queries": (),
        "multi_connection_requests": (), "events": (),
    }  # fmt: skip
    values.update(overrides)
    return PoolSnapshot(**values)  # type: ignore[arg-type]


def stats(checked_out: int = 0, overflow: int = 0) -> PoolStats:
    return PoolStats(
        pool_class="QueuePool", size=5, max_overflow=5, max_connections=10,
        checked_out=checked_out, checked_in=2, overflow=overflow, timeout_s=10.0,
        recycle_s=1800.0, pre_ping=True, echo=False,
    )  # fmt: skip


def backend(pid: int, state: str, *, app: str = "app", query: str = "SELECT $1") -> Backend:
    return Backend(
        pid=pid, datname="db", usename="u", application_name=app, client_addr="127.0.0.1",
        backend_type="client backend", state=state, wait_event_type="Client",
        wait_event="ClientRead", backend_age_s=60.0,
        xact_age_s=5.0 if "transaction" in state else None, query_age_s=5.0, state_age_s=5.0,
        query=query, query_hidden=False,
    )  # fmt: skip


SETTINGS = ServerSettings(
    server_version="15.20", server_version_num=150020, max_connections=100,
    superuser_reserved_connections=3, reserved_connections=0,
    idle_in_transaction_session_timeout_s=60.0, statement_timeout_s=None,
    idle_session_timeout_s=None, transaction_timeout_s=None,
)  # fmt: skip


def server(
    backends: tuple[Backend, ...] = (), *, up: bool | None = True, sample: bool = True
) -> ServerHealthSnapshot:
    last = ServerSample(
        taken_at=NOW - 1, duration_s=0.004, database="db", backends=backends,
        total_client_sessions=len(backends) + 1, settings=SETTINGS,
    )  # fmt: skip
    failed = up is False
    return ServerHealthSnapshot(
        up=up, last_sample=last if sample else None, errors_total=3 if failed else 0,
        last_error="connection refused" if failed else None,
        last_error_at=NOW - 2 if failed else None,
        last_success_at=NOW - 1 if sample else None, probe_durations_s=(0.004, 0.006),
        probes_total=5, skipped_total=0, hidden_queries=0,
    )  # fmt: skip


APP = AppInfo("postgresql://u:***@localhost/db", "DATABASE_URL", True, None, 1)


def make_view(
    snapshot: PoolSnapshot | None = None,
    health: ServerHealthSnapshot | None = None,
    pool_stats: PoolStats | None = None,
) -> MonitorView:
    return build_view(snapshot or pool(), pool_stats or stats(), health or server(), APP)


CTX = views.RenderContext(cwd="/srv")


# ---- formatting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "—"),
        (0.00004, "< 0.1 ms"),
        (0.0004, "0.4 ms"),
        (0.012, "12 ms"),
        (0.9996, "1.0 s"),
        (1.23, "1.2 s"),
        (59.96, "1 min 00 s"),
        (125.0, "2 min 05 s"),
        (3720.0, "1 h 02 min"),
        (93600.0, "1 d 2 h"),
        (math.inf, "∞"),
    ],
)
def test_duration(seconds: float | None, text: str) -> None:
    assert views.duration(seconds) == text


def test_ago_bound_label_and_short_path() -> None:
    assert views.ago(NOW - 3, NOW) == "3.0 s ago"
    assert views.ago(None, NOW) == "never"
    assert views.bound_label(0.005) == "≤ 5 ms"
    assert views.bound_label(math.inf, BOUNDS) == "> 10.0 s"
    assert views.short_path("/srv/app/routes.py", "/srv") == "app/routes.py"
    assert views.short_path("/x/lib/site-packages/pkg/m.py", "/srv") == "pkg/m.py"
    assert views.short_path("<string>", "/srv") == "<string>"


def test_quantile_of_bucket_counts() -> None:
    assert views.quantile(BOUNDS, (0,) * 10, 0.95) is None
    # 100 samples: 90 under 1 ms, 10 under 50 ms -> p95 falls in the 50 ms bucket.
    assert views.quantile(BOUNDS, (90, 90, 90, 100, 100, 100, 100, 100, 100, 100), 0.95) == 0.05


def test_sparkline_places_points_by_age_and_scales_to_the_peak() -> None:
    spark = views.sparkline(
        [(940.0, 0.0), (970.0, 2.0), (1000.0, 4.0)], window_s=60, now=1000.0, title="t",
        width=120, height=28,
    )  # fmt: skip
    assert spark is not None
    assert spark.line == "0.0,26.0 60.0,14.0 120.0,2.0"
    assert spark.area.startswith("0.0,28 ") and spark.area.endswith(" 120.0,28")
    assert views.sparkline([(1.0, 1.0)], window_s=60, now=1.0, title="t") is None
    flat = views.sparkline([(990.0, 0.0), (1000.0, 0.0)], window_s=60, now=1000.0, title="t")
    assert flat is not None and flat.line.endswith(",26.0")


# ---- held connections ------------------------------------------------------------------------


def test_held_row_joins_server_state_timer_and_site() -> None:
    leak = dataclasses.replace(connection(), leak_class=LeakClass.IDLE_IN_TRANSACTION)
    view = make_view(
        pool(connections=(leak, connection(slot=2, pid=102, held_s=None)), checked_out=1),
        server((backend(101, "idle in transaction"), backend(102, "idle"))),
        stats(checked_out=1),
    )
    panel = views.build_held(view, CTX)
    (row,) = panel.rows
    assert (row.slot, row.pid, row.route, row.request_id) == (
        1,
        "101",
        "GET /items/{item_id}",
        "req-1",
    )
    assert row.age == "5.0 s" and row.xact_age == "5.0 s"
    assert row.server_state == "idle in transaction" and row.wait_event == "Client: ClientRead"
    assert row.status == "fail" and row.leak == "idle in transaction"
    # idle_in_transaction_session_timeout is 60 s and the state is 5 s old.
    assert row.kill == "55.0 s (idle_in_transaction_session_timeout)"
    assert row.site_summary == "app/routes.py:42"
    assert row.site[0] == views.SiteFrame("app/routes.py:42", "read_items", SITE[0].source)
    assert panel.summary == "1 of 10 connection(s) checked out"


def test_site_summary_skips_generated_code() -> None:
    frames = views.site_frames((Frame("<generated wrapper>", 2, "_go", "x"), *SITE), "/srv")
    assert views.site_summary(frames) == "app/routes.py:42"
    assert views.site_summary(()) == "site not captured"


# ---- degraded server -------------------------------------------------------------------------


def test_database_down_since_start_degrades_every_panel() -> None:
    view = make_view(
        pool(connections=(connection(),), checked_out=1),
        server(up=False, sample=False),
        stats(checked_out=1),
    )
    status = views.build_status(view, CTX)
    assert status.banner is not None and status.banner.level == "fail"
    assert "never succeeded" in status.banner.title
    assert "connection refused" in status.banner.detail
    assert status.status == "fail" and status.server_version == "—"
    assert views.build_held(view, CTX).rows[0].server_state == "unknown (server down)"
    assert views.build_server(view, CTX).available is False
    assert views.build_blocking(view, CTX).available is False
    assert views.build_orphans(view, CTX).available is False
    probe = views.build_probe(view, CTX)
    assert (probe.status, probe.status_label) == ("fail", "Down")
    assert probe.last_error == "connection refused (2.0 s ago)"


def test_stale_sample_is_shown_as_stale_and_not_joined() -> None:
    view = make_view(
        pool(connections=(connection(),), checked_out=1),
        server((backend(101, "active"),), up=False),
        stats(checked_out=1),
    )
    banner = views.server_banner(view)
    assert banner is not None and banner.title == "Database unreachable"
    assert "1.0 s ago" in banner.detail
    panel = views.build_server(view, CTX)
    assert panel.available and panel.stale == "stale: last successful probe 1.0 s ago"
    assert views.build_held(view, CTX).rows[0].query == "—"


def test_waiting_for_first_probe() -> None:
    view = make_view(health=server(up=None, sample=False))
    banner = views.server_banner(view)
    assert banner is not None and banner.level == "warn"
    assert views.build_probe(view, CTX).status_label == "Waiting"
    assert views.build_server(view, CTX).capacity.used == "unknown until the first probe"


# ---- leaks, timeouts, slow queries -----------------------------------------------------------


def test_leak_rows_by_class_resolved_history_and_gc_reclaims() -> None:
    current = LeakRecord(1, 101, HOLDER, SITE, LeakClass.IDLE_IN_TRANSACTION, NOW - 4, 14.0)
    resolved = dataclasses.replace(
        current, slot_id=2, leak_class=LeakClass.IDLE, held_for_s=20.0,
        resolved_at=NOW - 30, how_resolved="gc_reclaimed",
    )  # fmt: skip
    reclaim = GcReclaim(NOW - 30, 2, HOLDER, SITE, 20.0)
    snapshot = pool(
        leaks=(current,), resolved_leaks=(resolved,), gc_reclaims=(reclaim,),
        counters=counters(gc_reclaimed=1, leaks_by_class={"idle_in_transaction": 3, "idle": 1}),
    )  # fmt: skip
    panel = views.build_leaks(make_view(snapshot), CTX)
    by_class = {c.label: c for c in panel.by_class}
    assert (by_class["idle in transaction"].current, by_class["idle in transaction"].total) == (
        1,
        3,
    )
    assert by_class["idle in transaction"].status == "fail"
    assert (by_class["idle but held"].current, by_class["idle but held"].status) == (0, "ok")
    (row,) = panel.current
    assert (row.leak, row.route, row.held, row.when) == (
        "idle in transaction",
        "GET /items/{item_id}",
        "14.0 s",
        "4.0 s ago",
    )
    assert row.site_summary == "app/routes.py:42" and row.outcome == ""
    (old,) = panel.resolved
    assert old.outcome == "reclaimed by the garbage collector" and old.when == "30.0 s ago"
    assert old.status == "warn"
    assert panel.gc_reclaims[0].held == "20.0 s" and panel.gc_total == 1
    assert panel.threshold == "10.0 s"


def test_timeouts_list_their_holders() -> None:
    record = PoolTimeoutRecord(NOW - 5, 10.0, (connection(),))
    panel = views.build_timeouts(
        make_view(pool(timeouts=(record,), counters=counters(timeouts=1))), CTX
    )
    (row,) = panel.rows
    assert (row.when, row.waited, panel.total) == ("5.0 s ago", "10.0 s", 1)
    assert row.holders[0].route == "GET /items/{item_id}"
    assert row.holders[0].site_summary == "app/routes.py:42"


def test_slow_query_rows() -> None:
    group = SlowQueryGroup("fp", "SELECT * FROM t WHERE a = $1", 4, 8.0, 3.0, NOW - 2, "GET /t")
    panel = views.build_slow(make_view(pool(slow_queries=(group,))), CTX)
    (row,) = panel.rows
    assert (row.count, row.total, row.max, row.mean) == (4, "8.0 s", "3.0 s", "2.0 s")
    assert (row.last_route, row.last_seen, panel.threshold) == ("GET /t", "2.0 s ago", "500 ms")


# ---- server side -----------------------------------------------------------------------------


def test_server_sessions_by_state_application_and_capacity() -> None:
    backends = (
        backend(101, "active"),
        backend(102, "idle in transaction"),
        backend(103, "idle", app='"><svg onload=alert(1)>'),
    )
    panel = views.build_server(make_view(health=server(backends)), CTX)
    states = {row.label: row.count for row in panel.by_state}
    assert states == {"active": 1, "idle": 1, "idle in transaction": 1}
    apps = {row.label: (row.count, row.detail) for row in panel.by_application}
    assert apps["app"] == (2, "1 active, 1 idle in transaction")
    assert apps['"><svg onload=alert(1)>'] == (1, "1 idle")  # raw here; escaped by Jinja
    assert panel.capacity.used == "4 of 97 connections in use, 93 free"
    assert panel.capacity.used_pct == 4 and panel.capacity.status == "ok"
    settings = {fact.label: fact.value for fact in panel.settings}
    assert settings["idle_in_transaction_session_timeout"] == "1 min 00 s"
    assert settings["statement_timeout"] == "off"


def test_blocked_and_blocking_sessions_name_the_pool_holder() -> None:
    blocked = dataclasses.replace(
        backend(102, "active", query="UPDATE t SET a = $1"), wait_event_type="Lock",
        wait_event="transactionid", blocked_by=(101,),
    )  # fmt: skip
    view = make_view(
        pool(connections=(connection(),), checked_out=1),
        server((backend(101, "idle in transaction"), blocked)),
        stats(checked_out=1),
    )
    panel = views.build_blocking(view, CTX)
    assert [(r.pid, r.blocked_by, r.wait_event) for r in panel.blocked] == [
        ("102", "101", "Lock: transactionid")
    ]
    assert [(r.pid, r.owner) for r in panel.blocking] == [("101", "GET /items/{item_id}")]


def test_orphans_and_phantoms() -> None:
    view = make_view(
        pool(connections=(connection(slot=1, pid=101), connection(slot=2, pid=555, held_s=None))),
        server((backend(101, "idle in transaction"), backend(999, "idle"))),
        stats(checked_out=1),
    )
    panel = views.build_orphans(view, CTX)
    assert [row.pid for row in panel.orphans] == ["999"]
    assert [(row.slot, row.pid, row.checked_out) for row in panel.phantoms] == [(2, "555", "no")]


def test_rules_panel_counts_statuses() -> None:
    view = make_view(pool(leaks=(LeakRecord(1, 1, HOLDER, (), LeakClass.IDLE, NOW, 11.0),)))
    panel = views.build_rules(view, CTX)
    rows = {row.rule: row for row in panel.rows}
    assert rows["Always close sessions"].status_label == "Failing"
    assert panel.summary.endswith("1 failing")


# ---- gauges and history ----------------------------------------------------------------------


def test_gauge_tiles_and_wait_p95_over_the_window() -> None:
    older = (10,) * 10  # 10 checkouts, all under 1 ms, before the window's first sample
    wait = histogram((10, 10, 10, 10, 30, 30, 30, 30, 30, 30), total=2.0)  # +20 under 100 ms
    samples = tuple(
        GaugeSample(at=1000.0 + i, used=i, idle=2, overflow=0, pending=0, wait_counts=older)
        for i in range(5)
    )
    ctx = views.RenderContext(cwd="/srv", samples=samples, samples_now=1005.0)
    view = make_view(
        pool(wait_time=wait, pending_requests=2), pool_stats=stats(checked_out=7, overflow=2)
    )
    panel = views.build_gauges(view, ctx)
    tiles = {tile.label: tile for tile in panel.tiles}
    assert (tiles["In use"].value, tiles["In use"].status, tiles["In use"].fill_pct) == (
        "7",
        "warn",
        70,
    )
    assert tiles["Overflow"].status_label == "Warning"
    assert (tiles["Pending"].value, tiles["Pending"].status) == ("2", "fail")
    assert tiles["Wait p95"].value == "≤ 100 ms"
    assert tiles["Wait p95"].detail.startswith("20 checkout(s) in the last 5.0 s")
    spark = tiles["In use"].spark
    assert spark is not None and spark.line.split()[-1] == "118.0,2.0"  # 1 s old of 60, the peak
    assert tiles["Max"].spark is None
    assert panel.window == "1 min 00 s"  # a young history is drawn over at least a minute


def test_gauge_history_keeps_one_sample_a_second_within_the_window() -> None:
    now = [100.0]
    history = GaugeHistory(window_s=10.0, min_interval_s=1.0, clock=lambda: now[0])

    def record() -> bool:
        return history.record(used=1, idle=0, overflow=0, pending=0, wait_counts=())

    assert record() is True
    now[0] += 0.5
    assert record() is False  # twice in one second: one sample
    for _ in range(20):
        now[0] += 1.0
        record()
    samples = history.samples()
    assert len(samples) <= 11
    assert samples[0].at >= now[0] - 10.0 and samples[-1].at == now[0]
    now[0] += 60.0
    assert history.samples() == ()


# ---- demo buttons and the registry -----------------------------------------------------------


def test_build_demo_keeps_well_formed_same_app_paths() -> None:
    buttons = views.build_demo(
        [
            ("/demo/leak", "Leak a session", "Never closes it."),
            ("https://evil.example/x", "Bad", "absolute URL"),
            ("//evil.example/x", "Bad", "scheme-relative URL"),
            ("/demo/too", "short"),
        ]
    )
    assert [(b.path, b.name, b.title) for b in buttons] == [
        ("/demo/leak", "leak", "Leak a session")
    ]
    assert views.build_demo(None) == ()


def test_every_panel_builds_on_an_idle_pool() -> None:
    view = make_view()
    for name in views.PANEL_NAMES:
        assert views.build_panel(name, view, CTX) is not None, name
    assert views.build_held(view, CTX).summary == "no connection checked out"
