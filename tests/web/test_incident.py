"""The dashboard during an incident, in a real Chromium: an exhausted pool with a garbage-collected
leak and a pool timeout reads as one group per fact, fits a phone and a desktop, and returns to
OK by itself once the verdict window has passed; a hanging CDN does not keep the page blank."""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import URL
from sqlalchemy.pool import Pool

from monitor.app import create_app
from monitor.instrumentation.pools_seen import ignore_pool
from monitor.settings import Settings
from tests.servers import wait_for
from tests.web.conftest import CDN, serve

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
# The README shows docs/dashboard.png (the incident) and docs/dashboard-calm.png: a run with
# MONITOR_DOCS_SCREENSHOTS=1 refreshes them; others leave the checkout clean.
SCREENSHOTS = ROOT / "docs" if os.environ.get("MONITOR_DOCS_SCREENSHOTS") == "1" else ARTIFACTS
DEMO_HEADERS = {"HX-Request": "true"}
# The verdict window here: the incident stays on screen for the screenshot, then clears.
WINDOW_S = 15.0
OUTSIDE_SESSIONS = 60
POLL_BUDGET_BYTES = 60_000


def _only_this_pool_counts(app: FastAPI) -> None:
    """Other tests' and fixtures' engines live in this process too: leave them out of the
    'one engine per app' rule, which would otherwise warn for ever here."""
    gc.collect()
    for pool in [obj for obj in gc.get_objects() if isinstance(obj, Pool)]:
        if pool is not app.state.engine.pool:
            ignore_pool(pool)


@pytest.fixture
def incident(app_settings: Settings) -> Iterator[tuple[FastAPI, str]]:
    settings = app_settings.model_copy(
        update={"demo_routes": True, "verdict_window_s": WINDOW_S, "demo_hold_ttl_s": 60.0}
    )
    app = create_app(settings)
    with serve(app) as base_url:
        _only_this_pool_counts(app)
        yield app, base_url
        httpx.post(f"{base_url}/demo/release", headers=DEMO_HEADERS, timeout=10)


def _no_horizontal_overflow(page: Any) -> bool:
    return bool(page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth"))


@pytest.mark.pool_monitor_allow(
    reason="the incident on purpose: a gc-leak, then exhaust (several connections in one "
    "request) and a pool timeout",
    kinds=("gc_reclaimed", "multi_connection_request", "pool_timeout"),
)
def test_exhausted_pool_reads_as_one_group_fits_and_recovers(
    incident: tuple[FastAPI, str], new_page: Callable[[], Any]
) -> None:
    from playwright.sync_api import expect

    _, base_url = incident
    page = new_page()
    page.goto(f"{base_url}/monitor/")
    page.wait_for_function("() => window.htmx !== undefined", timeout=10_000)
    badge = page.locator("#status-badge")
    expect(badge).to_have_text("OK", timeout=10_000)
    SCREENSHOTS.mkdir(exist_ok=True)

    # A session dropped unclosed (the GC returns it), then every connection taken at one site,
    # then a request that waits the pool timeout (1 s) and gets the app's 503.
    assert httpx.post(f"{base_url}/demo/gc-leak", headers=DEMO_HEADERS, timeout=10).is_success
    exhaust = httpx.post(
        f"{base_url}/demo/exhaust", params={"hold_s": 30}, headers=DEMO_HEADERS, timeout=10
    )
    assert exhaust.json()["held"] == 5, exhaust.text
    assert httpx.get(f"{base_url}/products", timeout=10).status_code == 503

    # Five connections at one route and line: one group row, not five rows in four tables.
    groups = page.locator("#leaks-current details.group")
    expect(groups).to_have_count(1, timeout=10_000)
    expect(groups.first).to_have_attribute("data-route", "POST /demo/exhaust")
    expect(groups.first).to_have_attribute("data-site", re.compile(r"scenarios\.py:\d+$"))
    expect(groups.first.locator(".g-count")).to_contain_text("5")
    expect(page.locator("#held-groups")).to_have_count(0)  # no second table of the same rows
    timeout = page.locator("#timeouts-list .timeout")
    expect(timeout).to_have_count(1)
    expect(timeout).to_contain_text("GET /products")
    expect(timeout.locator(".holders li")).to_have_count(1)
    expect(timeout.locator(".holders")).to_contain_text("POST /demo/exhaust")
    expect(page.locator("#gc-reclaims")).to_contain_text("POST /demo/gc-leak")
    expect(badge).to_have_text("Failing")
    expect(page.locator("#status-reason")).not_to_be_empty()
    # The server's view of the held connections arrives with the next probe.
    expect(groups.first.locator(".g-state")).to_contain_text("idle", timeout=10_000)
    groups.first.locator("summary").click()
    expect(groups.first.locator("table.conns tbody tr")).to_have_count(5)

    ARTIFACTS.mkdir(exist_ok=True)
    for width in (390, 1440):
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(300)  # one layout pass after the resize
        assert _no_horizontal_overflow(page), f"the page overflows at {width} px"
        page.screenshot(path=str(ARTIFACTS / f"dashboard-incident-{width}.png"), full_page=True)
    page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)

    assert httpx.post(f"{base_url}/demo/release", headers=DEMO_HEADERS, timeout=10).is_success
    # Nothing recurs: once the window has passed since the last event, OK by itself.
    expect(badge).to_have_text("OK", timeout=int(WINDOW_S * 1000) + 15_000)
    expect(page.locator("#leaks-current")).to_have_count(0)
    expect(page.locator("#timeouts-calm")).to_be_visible()
    assert _no_horizontal_overflow(page)
    page.screenshot(path=str(SCREENSHOTS / "dashboard-calm.png"), full_page=True)


def test_a_hanging_cdn_neither_blanks_the_page_nor_stops_htmx(
    incident: tuple[FastAPI, str], new_page: Callable[[], Any]
) -> None:
    from playwright.sync_api import expect

    _, base_url = incident
    page = new_page()
    hanging: list[str] = []
    # Accept the request and never answer: the case that kept the page blank for 30 s.
    page.route(CDN, lambda route: hanging.append(route.request.url))
    page.goto(f"{base_url}/monitor/", wait_until="domcontentloaded")
    expect(page.locator("#panel-timeouts")).to_be_visible()
    expect(page.locator("#status-badge")).to_be_visible()
    with page.expect_request(
        lambda request: request.url.endswith("/monitor/partials"), timeout=12_000
    ):
        page.wait_for_function("() => window.htmx !== undefined", timeout=10_000)
    assert hanging, "the page did not ask the CDN first"
    assert page.evaluate("window.htmx.version") == "2.0.11"


def test_a_poll_with_sixty_outside_sessions_stays_small(
    incident: tuple[FastAPI, str], schema_url: URL
) -> None:
    app, base_url = incident
    dsn = schema_url.set(drivername="postgresql").render_as_string(hide_password=False)
    sessions = []
    try:
        for index in range(OUTSIDE_SESSIONS):
            # Half of them are the app's own, detached from its pool: orphans, listed in a panel.
            if index % 2:
                conn = app.state.engine.raw_connection()
                conn.detach()
            else:
                conn = psycopg2.connect(dsn, application_name="outside-worker")
            if index % 3 == 0:
                conn.cursor().execute("BEGIN; SELECT 1")  # idle in transaction
            sessions.append(conn)

        def probe_sees_them() -> bool:
            data = httpx.get(f"{base_url}/monitor/api/snapshot", timeout=5).json()
            return len(data["orphans"]) >= OUTSIDE_SESSIONS // 2

        assert wait_for(probe_sees_them, 15, 0.2), "the probe never saw the outside sessions"
        poll = httpx.get(f"{base_url}/monitor/partials", timeout=10)
        assert poll.status_code == 200
        size = len(poll.content)
        assert size < POLL_BUDGET_BYTES, f"a poll is {size} bytes with {OUTSIDE_SESSIONS} sessions"
        assert "more (the oldest are listed)" in poll.text
    finally:
        for conn in sessions:
            conn.close()


def test_a_hidden_tab_skips_its_polls_and_resumes_when_shown(
    incident: tuple[FastAPI, str], new_page: Callable[[], Any]
) -> None:
    _, base_url = incident
    page = new_page()
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if r.url.endswith("/partials") else None)
    page.goto(f"{base_url}/monitor/")
    with page.expect_request(lambda request: request.url.endswith("/monitor/partials")):
        page.wait_for_function("() => window.htmx !== undefined", timeout=10_000)
    page.evaluate(
        "Object.defineProperty(document, 'visibilityState', {get: () => window.__shown ? "
        "'visible' : 'hidden', configurable: true})"
    )
    page.wait_for_timeout(500)  # a poll already in flight may still land
    before = len(polls)
    page.wait_for_timeout(4_500)  # two poll periods
    assert len(polls) == before, "a hidden tab polled"
    with page.expect_request(lambda request: request.url.endswith("/monitor/partials")):
        page.evaluate("window.__shown = true")
