"""Pool-side panels and the registry on literal records: held rows, degraded server, leaks,
timeouts, slow queries, rules, gauges and their history, demo buttons."""

from __future__ import annotations

import dataclasses

from monitor.state.holders import Holder
from monitor.state.records import (
    GcReclaim,
    LeakClass,
    LeakRecord,
    MultiConnectionRequest,
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


def test_suspects_are_grouped_in_the_leaks_panel_with_server_state_timer_and_site() -> None:
    leak = dataclasses.replace(connection(), leak_class=LeakClass.IDLE_IN_TRANSACTION)
    view = make_view(
        pool(connections=(leak, connection(slot=2, pid=102, held_s=None)), checked_out=1),
        server((backend(101, "idle in transaction"), backend(102, "idle"))),
        stats(checked_out=1),
    )
    held = views.build_held(view, CTX)
    assert held.groups == () and held.calm  # one line: the suspects are in the leaks panel
    assert (
        held.summary == "1 of 10 connection(s) checked out; 1 of them under suspected leaks, above"
    )
    (group,) = views.build_leaks(view, CTX).current
    assert (group.route, group.site_summary, group.count) == (
        "GET /items/{item_id}",
        "app/routes.py:42",
        1,
    )
    assert group.site[0] == SiteFrame("app/routes.py:42", "read_items", SITE[0].source)
    assert (group.status, group.leak, group.state) == (
        "fail",
        "idle in transaction",
        "idle in transaction",
    )
    (row,) = group.rows
    assert (row.slot, row.pid, row.request_id, row.age) == (1, "101", "req-1", "5.0 s")
    # The server sampled 1 s before the pool: its ages are brought up to the pool's instant.
    assert row.xact_age == "6.0 s" and row.wait_event == "Client: ClientRead"
    # idle_in_transaction_session_timeout is 60 s, the state was 5 s old a second ago.
    assert row.kill == "54.0 s (idle_in_transaction_session_timeout)"


def test_ten_connections_at_one_site_are_one_group_with_an_age_range() -> None:
    conns = tuple(connection(slot=i, pid=100 + i, held_s=float(i)) for i in range(1, 11))
    other = dataclasses.replace(
        connection(slot=11, pid=111, held_s=20.0),
        holder=Holder("request", "POST /orders", "req-2"),
    )
    backends = tuple(backend(100 + i, "idle" if i % 2 else "active") for i in range(1, 12))
    view = make_view(
        pool(connections=(*conns, other), checked_out=11), server(backends), stats(checked_out=11)
    )
    panel = views.build_held(view, CTX)
    assert [(g.route, g.count) for g in panel.groups] == [
        ("POST /orders", 1),  # the oldest first
        ("GET /items/{item_id}", 10),
    ]
    group = panel.groups[1]
    assert group.ages == "1.0 s to 10.0 s" and group.state == "active"
    assert len(group.rows) == 10 and group.key == panel.groups[1].key


def test_a_server_sample_older_than_the_checkout_is_not_shown_beside_it() -> None:
    # Checked out 0.5 s ago; the sample is 1 s old: its row is the previous holder's session.
    fresh = connection(held_s=0.5)
    view = make_view(
        pool(connections=(fresh,), checked_out=1),
        server((backend(101, "idle in transaction"),)),
        stats(checked_out=1),
    )
    (group,) = views.build_held(view, CTX).groups
    (row,) = group.rows
    assert row.server_state == "waiting for the next probe"
    assert (row.xact_age, row.query, row.kill) == ("—", "—", "—")
    assert views.freshness(view, server=True).endswith("server data 1.0 s old")
    assert not any(r.status == "fail" for r in views.build_rules(view, CTX).rows)


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
    assert views.build_held(view, CTX).groups[0].rows[0].server_state == "unknown (server down)"
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
    assert views.build_held(view, CTX).groups[0].rows[0].query == "—"


def test_waiting_for_first_probe() -> None:
    view = make_view(health=server(up=None, sample=False))
    banner = views.server_banner(view)
    assert banner is not None and banner.level == "warn"
    assert views.build_probe(view, CTX).status_label == "Waiting"
    assert server_panels.build_server(view, CTX).capacity.used == "unknown until the first probe"


# ---- leaks, timeouts, slow queries -----------------------------------------------------------


def test_leaks_panel_lists_recent_endings_and_gc_reclaims_grouped_and_counts_older_ones() -> None:
    current = LeakRecord(1, 101, HOLDER, SITE, LeakClass.IDLE_IN_TRANSACTION, NOW - 4, 14.0)
    ended = [
        dataclasses.replace(
            current,
            slot_id=slot,
            leak_class=LeakClass.IDLE,
            held_for_s=20.0 + slot,
            resolved_at=NOW - 30 - slot,
            how_resolved="returned",
        )
        for slot in (2, 3)
    ]
    old = dataclasses.replace(ended[0], resolved_at=NOW - 5000)  # before the 900 s window
    by_gc = dataclasses.replace(ended[0], how_resolved="gc_reclaimed")  # shown as a reclaim
    reclaim = GcReclaim(NOW - 30, 2, HOLDER, SITE, 20.0)
    leak_conn = dataclasses.replace(
        connection(held_s=14.0), leak_class=LeakClass.IDLE_IN_TRANSACTION
    )
    snapshot = pool(
        connections=(leak_conn,), checked_out=1, leaks=(current,),
        resolved_leaks=(*ended, old, by_gc), gc_reclaims=(reclaim,),
        counters=counters(gc_reclaimed=1, leaks_by_class={"idle_in_transaction": 3, "idle": 3}),
    )  # fmt: skip
    panel = views.build_leaks(make_view(snapshot, pool_stats=stats(checked_out=1)), CTX)
    by_class = {c.label: c for c in panel.by_class}
    assert (by_class["idle in transaction"].current, by_class["idle in transaction"].total) == (
        1,
        3,
    )
    assert by_class["idle in transaction"].status == "fail"
    assert (by_class["idle but held"].current, by_class["idle but held"].status) == (0, "ok")
    (group,) = panel.current
    assert (group.count, group.ages, group.leak) == (1, "14.0 s", "idle in transaction")
    (ended_group,) = panel.ended
    assert ended_group.count == 2 and ended_group.held == "22.0 s to 23.0 s"
    assert ended_group.outcome == "idle but held, returned to the pool"
    assert ended_group.when == "32.0 s ago" and ended_group.site_summary == "app/routes.py:42"
    (gc_group,) = panel.gc_reclaims
    assert (gc_group.count, gc_group.held, gc_group.status) == (1, "20.0 s", "fail")
    assert panel.earlier == 1 and panel.gc_total == 1 and panel.calm is False
    assert panel.threshold == "10.0 s"
    assert views.build_leaks(make_view(), CTX).calm is True


def test_timeouts_say_who_waited_where_and_group_the_holders() -> None:
    waiter = Holder("request", "GET /products", "req-9")
    holders = tuple(connection(slot=i, pid=100 + i, held_s=2.0 + i / 10) for i in range(5))
    records = tuple(PoolTimeoutRecord(NOW - 5 - i, 1.0, holders, waiter, SITE) for i in range(3))
    old = PoolTimeoutRecord(NOW - 5000, 1.0, holders, waiter, SITE)
    panel = views.build_timeouts(
        make_view(pool(timeouts=(*records, old), counters=counters(timeouts=4))), CTX
    )
    (row,) = panel.rows
    assert (row.waiter, row.site_summary, row.request_id) == (
        "GET /products",
        "app/routes.py:42",
        "req-9",
    )
    assert (row.count, row.waited, row.when, panel.recent, panel.total) == (
        3,
        "1.0 s",
        "5.0 s ago",
        3,
        4,
    )
    (group,) = row.holders
    assert (group.route, group.site_summary, group.count, group.held) == (
        "GET /items/{item_id}",
        "app/routes.py:42",
        5,
        "2.0 s to 2.4 s",
    )
    assert views.build_timeouts(make_view(), CTX).calm is True


def test_slow_query_rows_carry_their_site_and_leave_the_window() -> None:
    group = SlowQueryGroup(
        "fp", "SELECT * FROM t WHERE a = $1", 4, 8.0, 3.0, NOW - 2, "GET /t", SITE
    )
    stale = dataclasses.replace(group, fingerprint="old", last_seen_at=NOW - 5000)
    panel = views.build_slow(make_view(pool(slow_queries=(group, stale))), CTX)
    (row,) = panel.rows
    assert (row.count, row.total, row.max, row.mean) == (4, "8.0 s", "3.0 s", "2.0 s")
    assert (row.last_route, row.last_seen, panel.threshold) == ("GET /t", "2.0 s ago", "500 ms")
    assert row.site_summary == "app/routes.py:42" and panel.hidden == 1


def test_rules_panel_counts_statuses() -> None:
    view = make_view(pool(leaks=(LeakRecord(1, 1, HOLDER, (), LeakClass.IDLE, NOW, 11.0),)))
    panel = views.build_rules(view, CTX)
    rows = {row.rule: row for row in panel.rows}
    assert rows["Always close sessions"].status_label == "Failing"
    assert panel.summary == "7 ok, 0 warning, 1 failing (verdicts look back 15 min)"
    since = rows["Always close sessions"].since
    assert since.startswith("since ") and since.endswith(", still now")
    status = views.build_status(view, CTX)
    assert (status.status_label, status.since) == ("Failing", since)
    assert status.reason == "Always close sessions: 1 suspected leak(s) now"


def test_status_reason_names_a_past_gc_reclaim_and_when_it_clears() -> None:
    reclaim = GcReclaim(NOW - 30, 2, HOLDER, SITE, 20.0)
    multi = MultiConnectionRequest(NOW - 10, "POST /orders", "req-3", 3, (SITE, SITE, SITE[1:]))
    view = make_view(pool(gc_reclaims=(reclaim,), multi_connection_requests=(multi,)))
    status = views.build_status(view, CTX)
    assert status.reason == (
        "Always close sessions: 1 reclaimed by the garbage collector in the last 15 min"
    )
    assert status.since == (
        "since 03:32:50 UTC; last seen 30.0 s ago, OK at 03:47:50 UTC unless it recurs"
    )
    rows = {row.rule: row for row in views.build_rules(view, CTX).rows}
    assert rows["One session per request"].status == "warn"
    assert rows["One session per request"].evidence == (
        "POST /orders held 3 at once, taken at app/routes.py:42 (x2), app/main.py:7",
    )
    # Outside the window the same records are history, not a verdict.
    later = make_view(pool(taken_at=NOW + 1000, gc_reclaims=(reclaim,)))
    assert views.build_status(later, CTX).status == "ok"


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
    assert views.build_held(view, CTX).summary == "Nothing checked out right now."


def test_the_pool_rule_says_none_for_a_setting_that_is_not_set() -> None:
    no_recycle = dataclasses.replace(stats(), recycle_s=None, pre_ping=False)
    rows = {r.rule: r for r in views.build_rules(make_view(pool_stats=no_recycle), CTX).rows}
    why = rows["Use the pool"].why
    assert "recycle none" in why and "timeout 10 s" in why and "Nones" not in why
    assert rows["Use the pool"].status == "warn" and "no pool_recycle" in why
