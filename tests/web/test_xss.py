"""Stored XSS through session metadata: application_name and SQL text are shown as text, never run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg2
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection
from sqlalchemy.engine import URL

from monitor.app import create_app
from monitor.settings import Settings
from monitor.web import views
from tests.web.conftest import serve

APP_PAYLOAD = '"><svg onload=alert(1)>'
SCRIPT = "<script>alert(1)</script>"
# Literals and comments are dropped from shown SQL, so the payload rides in a quoted identifier too.
OUTSIDE_SQL = (
    f"SELECT '{SCRIPT}' AS \"{SCRIPT}\" "
    '/* <img src=x onerror=alert(1)> hx-get="/demo/leak" */, pg_sleep(3)'
)
POOL_SQL = f'SELECT 1 AS "{SCRIPT}", pg_sleep(0.3)'  # slower than slow_query_s: a slow group too

ESCAPED_SCRIPT = "&lt;script&gt;alert(1)&lt;/script&gt;"
ESCAPED_APP = "&#34;&gt;&lt;svg onload=alert(1)&gt;"
RAW = ("<script>alert", "<svg onload", "<img src=x", "onerror=alert")
PAGES = [
    "/monitor/",
    "/monitor/partials",
    *(f"/monitor/partials/{name}" for name in views.PANEL_NAMES),
]


@pytest.fixture
def hostile_settings(app_settings: Settings) -> Settings:
    # The app's own connections carry the payload name, so the outside session is an "orphan"
    # of this application and its query text is shown too.
    return app_settings.model_copy(update={"application_name": APP_PAYLOAD})


@contextmanager
def outside_session(url: URL) -> Iterator[int]:
    """A session outside the pool, named with the payload, running the payload query."""
    # The libpq URI form keeps a Unix-socket host given in the query (the embedded server).
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = psycopg2.connect(dsn, application_name=APP_PAYLOAD)
    conn.autocommit = True
    pid = conn.get_backend_pid()
    worker = threading.Thread(target=lambda: conn.cursor().execute(OUTSIDE_SQL), daemon=True)
    worker.start()
    try:
        yield pid
    finally:
        worker.join(10)
        conn.close()


@contextmanager
def hostile_data(engine: Any, url: URL, snapshot: Callable[[], dict[str, Any]]) -> Iterator[None]:
    """Hold a pool connection after the payload query while an outside session runs its own."""
    with outside_session(url) as outside_pid, engine.connect() as conn:
        held: Connection = conn
        held.exec_driver_sql("BEGIN")
        held.exec_driver_sql(POOL_SQL)
        deadline = time.monotonic() + 8
        while True:
            data = snapshot()
            orphans = {b["pid"] for b in data["orphans"]}
            queries = [h["server"]["query"] for h in data["held"] if h["server"]]
            if outside_pid in orphans and any(SCRIPT in query for query in queries):
                break
            if time.monotonic() > deadline:
                pytest.fail("the probe never showed both payload sessions")
            time.sleep(0.1)
        yield
        held.exec_driver_sql("ROLLBACK")


def test_pages_and_partials_escape_session_metadata(
    hostile_settings: Settings, schema_url: URL
) -> None:
    app = create_app(hostile_settings)
    with TestClient(app) as client:

        def snapshot() -> dict[str, Any]:
            return client.get("/monitor/api/snapshot").json()

        with hostile_data(app.state.engine, schema_url, snapshot):
            bodies = {page: client.get(page) for page in PAGES}
        assert app.state.engine.pool.checkedout() == 0
    for page, response in bodies.items():
        assert response.status_code == 200, page
        for raw in RAW:
            assert raw not in response.text, f"{raw!r} unescaped in {page}"
    for page in ("/monitor/", "/monitor/partials"):
        assert ESCAPED_SCRIPT in bodies[page].text and ESCAPED_APP in bodies[page].text, page
    # The held connection is listed as held or, past the threshold, as a suspected leak.
    held_or_leaked = bodies["/monitor/partials/held"].text + bodies["/monitor/partials/leaks"].text
    assert ESCAPED_SCRIPT in held_or_leaked
    for panel in ("slow", "orphans"):
        assert ESCAPED_SCRIPT in bodies[f"/monitor/partials/{panel}"].text, panel
    for panel in ("server", "orphans"):
        assert ESCAPED_APP in bodies[f"/monitor/partials/{panel}"].text, panel


@pytest.mark.browser
def test_browser_shows_payloads_as_text_and_runs_nothing(
    hostile_settings: Settings, schema_url: URL, new_page: Callable[[], Any]
) -> None:
    from playwright.sync_api import expect

    app = create_app(hostile_settings)
    with serve(app) as base_url:

        def snapshot() -> dict[str, Any]:
            return httpx.get(f"{base_url}/monitor/api/snapshot", timeout=5).json()

        with hostile_data(app.state.engine, schema_url, snapshot):
            page = new_page()
            dialogs: list[str] = []
            demo_requests: list[str] = []
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.on(
                "request",
                lambda request: (
                    demo_requests.append(request.url) if "/demo/" in request.url else None
                ),
            )
            page.goto(f"{base_url}/monitor/")
            page.wait_for_function("() => window.htmx !== undefined", timeout=10_000)
            # The payloads are on screen as literal text, before and after polled swaps.
            expect(page.locator("main")).to_contain_text(SCRIPT)
            expect(page.locator("#sessions-by-app")).to_contain_text(APP_PAYLOAD)
            page.wait_for_timeout(4_500)  # two polling rounds swap every panel
            expect(page.locator("#orphans-table")).to_contain_text(SCRIPT)
            assert page.locator("main script, main img, main svg:not(.spark)").count() == 0
    assert dialogs == [], f"a dialog opened: {dialogs}"
    assert demo_requests == [], f"the page requested demo routes: {demo_requests}"
