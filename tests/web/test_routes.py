"""Dashboard, partials and the JSON API over HTTP: held rows, degraded views, token, vendored htmx."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from monitor.app import create_app
from monitor.settings import Settings
from monitor.web import views
from monitor.web.install import add_monitor_routes
from monitor.web.routes import HTMX_SRI, POLL_TIMEOUT_MS, POLL_TRIGGER, poll_target
from tests.servers import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
VENDORED = ROOT / "static" / "vendor" / "htmx-2.0.11.min.js"
PARTIALS = [f"/monitor/partials/{name}" for name in views.PANEL_NAMES]
TOKEN = "t0ken-with-some-length-1234"


def _polled_elements(html: str) -> list[str]:
    return re.findall(r"<[a-z]+[^>]*\bhx-get=[^>]*>", html)


def _oob_parts(html: str) -> dict[str, str]:
    """The combined poll's answer as target id -> the HTML swapped into it."""
    pieces = re.split(r'<div id="([a-z-]+)" hx-swap-oob="innerHTML">', html)
    assert pieces[0].strip() == "", "text outside the out-of-band parts"
    return {
        target: part.rstrip().removesuffix("</div>")
        for target, part in zip(pieces[1::2], pieces[2::2], strict=True)
    }


def test_dashboard_and_partials_show_a_held_connection(client: TestClient) -> None:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        conn.exec_driver_sql("BEGIN")
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()

        def joined_and_leaked() -> bool:
            data = client.get("/monitor/api/snapshot").json()
            return any(h["server"] for h in data["held"]) and bool(data["pool"]["leaks"])

        assert wait_for(joined_and_leaked, 30, 0.1), "the probe never joined the held connection"
        page = client.get("/monitor/")
        assert page.status_code == 200
        assert page.headers["cache-control"] == "no-store"
        html = page.text
        # The first render is complete without JavaScript: the data is in the page itself.
        assert f'data-label="pid">{pid}</td>' in html
        assert "idle in transaction" in html and "test_routes.py:" in html

        # Held past the threshold: listed once, as a suspected leak, not again among the held.
        held = client.get("/monitor/partials/held")
        assert held.status_code == 200 and f">{pid}<" not in held.text
        assert "1 of them under suspected leaks" in held.text
        leaks = client.get("/monitor/partials/leaks")
        assert 'id="leaks-current"' in leaks.text and "idle in transaction" in leaks.text
        assert f">{pid}<" in leaks.text and "MainThread (no request)" in leaks.text
        assert "pool-monitor-app" in client.get("/monitor/partials/server").text
        combined = _oob_parts(client.get("/monitor/partials").text)
        assert f">{pid}<" in combined[poll_target("leaks")]
        assert "idle in transaction" in combined[poll_target("leaks")]
        for url in PARTIALS:
            response = client.get(url)
            assert response.status_code == 200, url
            assert "Monitor data unavailable" not in response.text, url
        conn.exec_driver_sql("ROLLBACK")
    assert "Nothing checked out right now." in client.get("/monitor/partials/held").text


def test_one_request_polls_every_panel_by_id(client: TestClient) -> None:
    html = client.get("/monitor/").text
    polled = _polled_elements(html)
    assert len(polled) == 1, polled
    poller = polled[0]
    assert f'hx-trigger="{POLL_TRIGGER}"' in poller.replace("&#39;", "'"), poller
    assert 'hx-get="/monitor/partials"' in poller and 'hx-swap="none"' in poller, poller
    assert f"hx-request='{{\"timeout\": {POLL_TIMEOUT_MS}}}'" in poller, poller

    response = client.get("/monitor/partials")
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    parts = _oob_parts(response.text)
    assert list(parts) == [poll_target(name) for name in views.PANEL_NAMES]
    for target, part in parts.items():
        # Each part lands in exactly one element of the page, and brings a panel, not an error.
        assert html.count(f'id="{target}"') == 1, target
        assert part.strip() and "Monitor data unavailable" not in part, target


def test_unknown_panel_is_404(client: TestClient) -> None:
    assert client.get("/monitor/partials/nope").status_code == 404


def test_gauge_sparklines_appear_once_history_has_samples(client: TestClient) -> None:
    assert "<polyline" not in client.get("/monitor/partials/gauges").text
    for _ in range(2):
        time.sleep(1.05)  # the history keeps at most one sample a second
        response = client.get("/monitor/partials/gauges")
    assert response.status_code == 200 and "<polyline" in response.text


def test_vendored_htmx_matches_the_integrity_attribute(client: TestClient) -> None:
    html = client.get("/monitor/").text
    match = re.search(
        r'<script src="https://cdn\.jsdelivr\.net/npm/htmx\.org@2\.0\.11/dist/htmx\.min\.js" '
        r'integrity="(sha384-[A-Za-z0-9+/=]+)" crossorigin="anonymous" async id="htmx-cdn">'
        r"</script>",
        html,
    )
    assert match is not None, "the CDN script tag with integrity and crossorigin is missing"
    served = client.get("/monitor/static/vendor/htmx-2.0.11.min.js")
    assert served.status_code == 200 and served.content == VENDORED.read_bytes()
    digest = base64.b64encode(hashlib.sha384(served.content).digest()).decode()
    assert match.group(1) == f"sha384-{digest}" == HTMX_SRI
    # No inline script: dashboard.js (deferred, same origin) loads the same file when the CDN
    # has not delivered; neither script blocks rendering.
    assert '<script src="/monitor/static/dashboard.js" defer' in html
    assert 'data-htmx-local="/monitor/static/vendor/htmx-2.0.11.min.js"' in html
    assert re.search(r"<script>|<script [^>]*>[^<]", html) is None, "an inline script"
    assert "loadVendoredHtmx" in client.get("/monitor/static/dashboard.js").text
    favicon = client.get("/monitor/static/favicon.svg")
    assert favicon.status_code == 200 and favicon.text.startswith("<svg")
    assert 'rel="icon" href="/monitor/static/favicon.svg"' in html
    assert "Zero-Clause BSD" in (ROOT / "static" / "vendor" / "htmx.LICENSE").read_text()
    assert client.get("/monitor/static/app.css").status_code == 200


def test_database_down_shows_a_banner_and_every_fragment_stays_200() -> None:
    url = f"postgresql://nobody:S3cret-pw@127.0.0.1:{free_port()}/nowhere"
    app = create_app(Settings(database_url=url, pool_timeout_s=1.0, probe_interval_s=0.5))
    with TestClient(app) as client:
        assert wait_for(
            lambda: "Database unreachable" in client.get("/monitor/partials/status").text, 10, 0.1
        ), "the failed probe never showed in the status banner"
        page = client.get("/monitor/")
        assert page.status_code == 200
        assert "the probe has never succeeded" in page.text
        assert 'class="banner banner-fail"' in page.text
        for url_path in PARTIALS:
            response = client.get(url_path)
            assert response.status_code == 200, url_path
            assert "S3cret-pw" not in response.text
        assert "Down" in client.get("/monitor/partials/probe").text
        assert "No server sample yet" in client.get("/monitor/partials/server").text


def test_without_a_monitor_the_pages_degrade() -> None:
    app = FastAPI()
    add_monitor_routes(app)
    with TestClient(app) as client:
        page = client.get("/monitor/")
        assert page.status_code == 200 and "Monitor data unavailable" in page.text
        assert "The monitor is not running" in page.text
        combined = _oob_parts(client.get("/monitor/partials").text)
        assert list(combined) == [poll_target(name) for name in views.PANEL_NAMES]
        for part in combined.values():
            assert "The monitor is not running" in part
        for url in PARTIALS:
            response = client.get(url)
            assert response.status_code == 200 and "Monitor data unavailable" in response.text
        assert client.get("/monitor/api/snapshot").status_code == 503


@pytest.fixture
def token_client(app_settings: Settings) -> Iterator[TestClient]:
    app = create_app(app_settings.model_copy(update={"dashboard_token": TOKEN}))
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize(
    "url", ["/monitor/", "/monitor/partials", "/monitor/partials/held", "/monitor/api/snapshot"]
)
def test_token_required_when_configured(token_client: TestClient, url: str) -> None:
    refused = token_client.get(url)
    assert refused.status_code == 401
    assert refused.json() == {"detail": "dashboard token required"}
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert token_client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    wrong = token_client.get(url, params={"token": "wrong"}, follow_redirects=False)
    assert wrong.status_code == 401
    allowed = token_client.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert allowed.status_code == 200


def test_login_form_trades_the_token_for_a_cookie(token_client: TestClient) -> None:
    # The token travels in a POST body: never in a URL, so never in an access log.
    wrong = token_client.post("/monitor/login", data={"token": "wrong"}, follow_redirects=False)
    assert wrong.status_code == 401 and "not the right one" in wrong.text
    assert "set-cookie" not in wrong.headers
    response = token_client.post("/monitor/login", data={"token": TOKEN}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/monitor/"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/;" in cookie
    assert TOKEN not in cookie, "the cookie holds a digest, not the token itself"
    # The client keeps the cookie: the dashboard and its partials now answer without a header.
    assert token_client.get("/monitor/").status_code == 200
    assert token_client.get("/monitor/partials/held").status_code == 200
    assert token_client.get("/monitor/partials").status_code == 200
    token_client.cookies.clear()
    assert token_client.get("/monitor/partials/held").status_code == 401
    # Static assets hold no data and stay public.
    assert token_client.get("/monitor/static/app.css").status_code == 200


def test_a_token_in_the_url_is_not_a_way_in(token_client: TestClient) -> None:
    response = token_client.get("/monitor/", params={"token": TOKEN}, follow_redirects=False)
    assert response.status_code == 401
    assert "set-cookie" not in response.headers


def test_a_browser_without_the_token_gets_the_login_form(token_client: TestClient) -> None:
    page = token_client.get("/monitor/", headers={"Accept": "text/html"})
    assert page.status_code == 401
    assert '<form method="post" action="/monitor/login">' in page.text
    assert 'name="token"' in page.text and TOKEN not in page.text


def test_a_failing_panel_still_answers_200(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(view: object, ctx: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setitem(views.BUILDERS, "held", broken)
    # A model the template cannot read: the StrictUndefined error is caught at render time.
    monkeypatch.setitem(views.BUILDERS, "slow", lambda view, ctx: object())
    held = client.get("/monitor/partials/held")
    assert held.status_code == 200 and "failed to render (RuntimeError)" in held.text
    slow = client.get("/monitor/partials/slow")
    assert slow.status_code == 200 and "failed to render (UndefinedError)" in slow.text
    # In the combined poll each failure spoils its own part only.
    parts = _oob_parts(client.get("/monitor/partials").text)
    assert "failed to render (RuntimeError)" in parts[poll_target("held")]
    assert "failed to render (UndefinedError)" in parts[poll_target("slow")]
    assert "failed to render" not in parts[poll_target("rules")]
    monkeypatch.setitem(views.BUILDERS, "slow", views.build_slow)
    page = client.get("/monitor/")
    assert page.status_code == 200
    assert "failed to render (RuntimeError)" in page.text and 'id="panel-rules"' in page.text
