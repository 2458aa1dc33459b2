"""Server-side panels on literal records: sessions by state, capacity, blocking, orphans."""

from __future__ import annotations

import dataclasses

from monitor.web import server_panels
from tests.web.snapshots import CTX, backend, connection, make_view, pool, server, stats


def test_server_sessions_by_state_application_and_capacity() -> None:
    backends = (
        backend(101, "active"),
        backend(102, "idle in transaction"),
        backend(103, "idle", app='"><svg onload=alert(1)>'),
    )
    panel = server_panels.build_server(make_view(health=server(backends)), CTX)
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
    panel = server_panels.build_blocking(view, CTX)
    assert [(r.pid, r.blocked_by, r.wait_event) for r in panel.blocked] == [
        ("102", "101", "Lock: transactionid")
    ]
    assert [(r.pid, r.owner) for r in panel.blocking] == [("101", "GET /items/{item_id}")]


def test_orphans_and_phantoms() -> None:
    view = make_view(
        pool(
            connections=(connection(slot=1, pid=101), connection(slot=2, pid=555, held_s=None)),
            detached_pids=(999,),  # detached from the pool, still open: an orphan
        ),
        server((backend(101, "idle in transaction"), backend(999, "idle"), backend(998, "idle"))),
        stats(checked_out=1),
    )
    panel = server_panels.build_orphans(view, CTX)
    assert [row.pid for row in panel.orphans] == ["999"]
    assert [(row.slot, row.pid, row.checked_out) for row in panel.phantoms] == [(2, "555", "no")]
