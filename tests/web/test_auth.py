"""The dashboard token: never in a logged URL, and it covers the demo routes too."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL

from monitor.app import create_app
from monitor.settings import Settings
from monitor.web.log_filters import mask_query_secrets
from tests.conftest import url_string
from tests.servers import app_process

TOKEN = "s3cret-T0ken-for-the-log-test"
GUESS = "wr0ng-Guess-for-the-log-test"
HTMX = {"HX-Request": "true"}


@pytest.fixture
def demo_token_client(app_settings: Settings) -> Iterator[TestClient]:
    settings = app_settings.model_copy(update={"demo_routes": True, "dashboard_token": TOKEN})
    with TestClient(create_app(settings)) as client:
        yield client


def test_the_token_covers_the_demo_routes(demo_token_client: TestClient) -> None:
    assert demo_token_client.post("/demo/release", headers=HTMX).status_code == 401
    wrong = {**HTMX, "Authorization": "Bearer wrong"}
    assert demo_token_client.post("/demo/release", headers=wrong).status_code == 401
    right = {**HTMX, "Authorization": f"Bearer {TOKEN}"}
    assert demo_token_client.post("/demo/release", headers=right).status_code == 200
    # The login cookie (path /) reaches the demo buttons the dashboard shows.
    demo_token_client.post("/monitor/login", data={"token": TOKEN})
    assert demo_token_client.post("/demo/release", headers=HTMX).status_code == 200
    assert demo_token_client.get("/healthz").status_code == 200  # outside the token


def test_demo_routes_stay_open_without_a_token(app_settings: Settings) -> None:
    settings = app_settings.model_copy(update={"demo_routes": True})
    with TestClient(create_app(settings)) as client:
        assert client.post("/demo/release", headers=HTMX).status_code == 200


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (f"/monitor/?token={TOKEN}", "/monitor/?token=***"),
        (f"/monitor/?view=x&TOKEN={TOKEN}&y=1", "/monitor/?view=x&TOKEN=***&y=1"),
        ("/monitor/?tokens=1", "/monitor/?tokens=1"),
        (f"/x?access_token={TOKEN}", "/x?access_token=***"),
    ],
)
def test_query_secrets_are_masked(text: str, masked: str) -> None:
    assert mask_query_secrets(text) == masked


@pytest.mark.timeout(120)
def test_the_token_never_reaches_the_access_log(schema_url: URL) -> None:
    env = {"DATABASE_URL": url_string(schema_url), "MONITOR_DASHBOARD_TOKEN": TOKEN}
    with app_process("serve", env) as app, httpx.Client(base_url=app.base, timeout=30) as client:
        # The old way (a URL), right and wrong, then the login form, right and wrong.
        assert client.get(f"/monitor/?token={TOKEN}").status_code == 401
        assert client.get(f"/monitor/?token={GUESS}").status_code == 401
        assert client.get(f"/monitor/api/snapshot?view=1&token={TOKEN}").status_code == 401
        assert client.post("/monitor/login", data={"token": GUESS}).status_code == 401
        login = client.post("/monitor/login", data={"token": TOKEN}, follow_redirects=False)
        assert login.status_code == 303
        assert client.get("/monitor/api/snapshot").status_code == 200  # the cookie
    log = app.output
    assert '"POST /monitor/login HTTP/1.1" 303' in log, log[-2000:]
    assert "GET /monitor/?token=*** HTTP/1.1" in log  # the request is logged, masked
    assert TOKEN not in log
    assert GUESS not in log
