"""The PgBouncer panel on literal views: direct, unknown mode, a saturated pool."""

from __future__ import annotations

import dataclasses

from monitor.state.pgbouncer import PgBouncerHealthSnapshot, PgBouncerPool, PgBouncerSample
from monitor.state.view import build_view
from monitor.web.pgbouncer_panel import build_pgbouncer
from monitor.web.templating import get_templates
from tests.web.snapshots import APP, CTX, NOW, make_view, pool, server, stats


def behind_pooler() -> object:
    health = server()
    assert health.last_sample is not None
    return dataclasses.replace(
        health, last_sample=dataclasses.replace(health.last_sample, via_pooler=True)
    )


def render(model: object) -> str:
    return get_templates().env.get_template("partials/_pgbouncer.html").render(p=model)


def test_direct_path_says_so() -> None:
    panel = build_pgbouncer(make_view(), CTX)
    assert (panel.status, panel.status_label, panel.pools) == ("ok", "Direct", ())
    assert "directly" in render(panel)


def test_a_pooler_without_console_is_a_warning_with_the_reason() -> None:
    view = build_view(pool(), stats(), behind_pooler(), APP)  # type: ignore[arg-type]
    panel = build_pgbouncer(view, CTX)
    assert panel.status == "warn" and panel.status_label == "PgBouncer"
    assert panel.note is not None and "pgbouncer_url" in panel.note
    assert 'id="pgbouncer-no-join"' in render(panel)


def test_waiting_clients_past_five_seconds_fail_the_pool_row() -> None:
    saturated = PgBouncerPool("db", "u", "transaction", 20, 6, 10, 0, 0, 0, 0, 7.5)
    admin = PgBouncerPool("pgbouncer", "pgbouncer", "statement", 1, 0, 0, 0, 0, 0, 0, 0.0)
    sample = PgBouncerSample(NOW, 0.01, "session", 500, 10, (saturated, admin), (), (), ())
    console = PgBouncerHealthSnapshot(True, sample, 0, None, NOW - 1, 0.01)
    view = build_view(pool(), stats(), behind_pooler(), APP, pgbouncer=console)  # type: ignore[arg-type]
    panel = build_pgbouncer(view, CTX)
    assert panel.status == "fail" and panel.status_label == "PgBouncer, transaction mode"
    (row,) = panel.pools  # the console's own pool is left out
    assert (row.clients_waiting, row.max_wait, row.status) == (6, "7.5 s", "fail")
    html = render(panel)
    assert 'id="pgbouncer-pools"' in html and "<td>db</td>" in html
