"""Pool-side panels and the registry on literal records: held rows, degraded server, leaks,
timeouts, slow queries, rules, gauges and their history, demo buttons."""

from __future__ import annotations

import dataclasses

from monitor.state.group import GroupInfo
from monitor.state.records import (
    GcReclaim,
    LeakClass,
    LeakRecord,
    PoolTimeoutRecord,
    SlowQueryGroup,
)
from monitor.web import server_panels, views
from monitor.web.formatting import SiteFrame
from monitor.web.history import GaugeHistory, GaugeSample
from monitor.web.render_context import RenderContext
from tests.web.snapshots import (
    CTX,
    HOLDER,
    NOW,
    SITE,
    backend,
    connection,
    counters,
    histogram,
    make_view,
    pool,
    server,
    stats,
)

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
    assert row.site[0] == SiteFrame("app/routes.py:42", "read_items", SITE[0].source)
    assert panel.summary == "1 of 10 connection(s) checked out"


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
    assert server_panels.build_server(view, CTX).available is False
    assert server_panels.build_blocking(view, CTX).available is False
    assert server_panels.build_orphans(view, CTX).available is False
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
    panel = server_panels.build_server(view, CTX)
    assert panel.available and panel.stale == "stale: last successful probe 1.0 s ago"
    assert views.build_held(view, CTX).rows[0].query == "—"


def test_waiting_for_first_probe() -> None:
    view = make_view(health=server(up=None, sample=False))
    banner = views.server_banner(view)
    assert banner is not None and banner.level == "warn"
    assert views.build_probe(view, CTX).status_label == "Waiting"
    assert server_panels.build_server(view, CTX).capacity.used == "unknown until the first probe"


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
    ctx = RenderContext(cwd="/srv", samples=samples, samples_now=1005.0)
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


def test_several_workers_get_a_worker_column_and_say_who_answered() -> None:
    single = views.build_held(make_view(pool(connections=(connection(slot=1),))), CTX)
    assert single.show_worker is False
    connections = (
        dataclasses.replace(connection(slot=1, pid=101), worker=4001),
        dataclasses.replace(connection(slot=1, pid=102), worker=4002),
    )
    view = dataclasses.replace(
        make_view(pool(connections=connections)),
        group=GroupInfo(answered_by=4002, workers=(4002, 4001), stale_workers=0,
                        retired_workers=1),
    )  # fmt: skip
    held = views.build_held(view, CTX)
    assert held.show_worker is True
    assert [row.worker for row in held.rows] == ["4001", "4002"]
    assert len({row.key for row in held.rows}) == 2  # same slot number, two workers
    assert views.build_status(view, CTX).workers == "2 worker(s), answered by pid 4002"
    assert views.build_status(make_view(), CTX).workers == ""
