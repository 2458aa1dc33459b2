"""The dashboard in a real headless Chromium: vendored htmx fallback, live polling, failed polls,
demo buttons."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from monitor.app import create_app
from monitor.settings import Settings
from monitor.web.routes import POLL_TIMEOUT_MS
from tests.servers import wait_for
from tests.web.conftest import serve

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
VENDORED = "/monitor/static/vendor/htmx-2.0.11.min.js"


@pytest.fixture
def live(app_settings: Settings) -> Iterator[tuple[FastAPI, str]]:
    """The app on a loopback port, with the demo routes when this checkout has them."""
    demo = importlib.util.find_spec("monitor.demo.scenarios") is not None
    app = create_app(app_settings.model_copy(update={"demo_routes": demo}))
    with serve(app) as base_url:
        yield app, base_url


def test_vendored_htmx_loads_and_panels_poll_without_reload(
    live: tuple[FastAPI, str], new_page: Callable[[], Any]
) -> None:
    from playwright.sync_api import expect

    app, base_url = live
    page = new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{base_url}/monitor/")
    page.wait_for_function("() => window.htmx !== undefined", timeout=10_000)
    assert page.evaluate("window.htmx.version") == "2.0.11"
    assert f"{base_url}{VENDORED}" in requested, "the CDN is blocked: htmx must be the local copy"

    held = page.locator("#panel-held .panel-body")
    expect(held).to_contain_text("Nothing checked out")
    page.evaluate("window.__sameDocument = true")
    with app.state.engine.connect() as conn:
        conn.exec_driver_sql("BEGIN")
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        # Held, then (past the 1 s leak threshold) a suspected leak: listed in one panel or the other.
        table = page.locator("main")
        expect(table).to_contain_text(str(pid), timeout=8_000)
        # The server's side arrives with the next probe: state and the line that took it.
        expect(table).to_contain_text("idle in transaction", timeout=8_000)
        expect(table).to_contain_text("test_browser.py:", timeout=8_000)
        conn.exec_driver_sql("ROLLBACK")
    expect(held).to_contain_text("Nothing checked out", timeout=8_000)
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded instead of polling"
    # Every panel came through one request per poll, none through a request of its own.
    polls = [url for url in requested if url == f"{base_url}/monitor/partials"]
    assert len(polls) >= 2, requested
    assert not [url for url in requested if "/monitor/partials/" in url], requested


def test_a_failed_poll_is_shown_until_one_succeeds(
    app_settings: Settings, new_page: Callable[[], Any]
) -> None:
    from playwright.sync_api import expect

    token = "browser-test-token-0123456789"
    app = create_app(app_settings.model_copy(update={"dashboard_token": token}))
    with serve(app) as base_url:
        page = new_page()
        page.goto(f"{base_url}/monitor/")  # the login form: the token goes in a POST body
        page.fill("input[name=token]", token)
        page.click("button[type=submit]")
        page.wait_for_function("() => window.htmx !== undefined", timeout=10_000)
        banner = page.locator("#poll-status")
        expect(banner).to_be_hidden()
        cookies = page.context.cookies()
        assert cookies, "the token did not become a session cookie"

        page.context.clear_cookies()  # the server now refuses the polls: a real 401
        expect(banner).to_be_visible(timeout=6_000)
        expect(banner).to_contain_text("HTTP 401")
        expect(banner).to_contain_text("token")
        page.context.add_cookies(cookies)
        expect(banner).to_be_hidden(timeout=6_000)

        # No answer at all (the connection fails) is said too, and recovers the same way.
        polls = f"{base_url}/monitor/partials"
        page.route(polls, lambda route: route.abort())
        expect(banner).to_contain_text("did not answer", timeout=6_000)
        page.unroute(polls)
        expect(banner).to_be_hidden(timeout=6_000)

        # A poll left hanging (a stuck server) is given up after POLL_TIMEOUT_MS, not waited on.
        page.route(polls, lambda route: None)
        started = time.monotonic()
        expect(banner).to_be_visible(timeout=POLL_TIMEOUT_MS + 5_000)
        # Not before the timeout: the hanging poll starts at most one 2 s period after `started`.
        assert time.monotonic() - started >= POLL_TIMEOUT_MS / 1000 - 2.5
        expect(banner).to_contain_text("did not answer")
        page.unroute(polls)
        page.close()  # no poll in flight while the server stops


def test_demo_buttons_leak_then_release(
    live: tuple[FastAPI, str], new_page: Callable[[], Any]
) -> None:
    from playwright.sync_api import expect

    app, base_url = live
    if not getattr(app.state, "demo_scenarios", None):
        pytest.skip("create_app does not put the demo SCENARIOS on app.state.demo_scenarios")
    # Without HX-Request the route refuses (403) and holds nothing; 404 means there is no route.
    if httpx.post(f"{base_url}/demo/leak", timeout=5).status_code == 404:
        pytest.skip("POST /demo/leak returns 404: the demo routes are not installed")

    page = new_page()
    page.goto(f"{base_url}/monitor/")
    page.wait_for_function("() => window.htmx !== undefined", timeout=10_000)
    result = page.locator("#demo-result")

    page.locator('button[data-demo="slow-query"]').click()
    expect(result).to_contain_text("HTTP 200", timeout=10_000)
    leak = page.locator('button[data-demo="leak"]')
    leak.click()
    expect(result).to_contain_text(f"HTTP 200 · {leak.inner_text().strip()}", timeout=10_000)
    current = page.locator("#leaks-current")
    # Leak threshold is 1 s in the test settings; the probe then classifies it.
    expect(current).to_contain_text("POST /demo/leak", timeout=10_000)
    expect(page.locator("#slow-table")).to_contain_text("pg_sleep", timeout=8_000)

    # An opened checkout site stays open across polls (the panel is swapped every 2 s).
    site = page.locator("#leaks-current details.group").first
    site.locator("summary").click()
    page.wait_for_timeout(2_600)
    assert site.evaluate("d => d.open") is True
    expect(site.locator("table.conns")).to_be_visible()
    expect(site).to_contain_text("scenarios.py")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    page.locator('button[data-demo="release"]').click()
    expect(page.locator("#leaks-current-empty")).to_be_visible(timeout=10_000)
    expect(page.locator("#leaks-resolved")).to_contain_text("POST /demo/leak")
    assert wait_for(lambda: app.state.engine.pool.checkedout() == 0, 10, 0.1), (
        "the demo never released"
    )
