"""The demo routes' guards: off by default, POST only, same-origin only (reliability §6 items 20, 21)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from monitor.demo.scenarios import SCENARIOS
from tests.demo.conftest import HTMX

PATHS = [scenario.path for scenario in SCENARIOS]


def test_demo_routes_are_off_by_default(client: TestClient) -> None:
    for path in PATHS:
        assert client.post(path, headers=HTMX).status_code == 404, path
        assert client.get(path).status_code == 404, path
    schema_paths = client.get("/openapi.json").json()["paths"]
    assert not [path for path in schema_paths if path.startswith("/demo")]
    assert not hasattr(client.app.state, "demo_holdings")  # type: ignore[attr-defined]


def test_enabled_routes_are_in_the_schema_as_post_only(demo_client: TestClient) -> None:
    schema_paths = demo_client.get("/openapi.json").json()["paths"]
    for scenario in SCENARIOS:
        assert set(schema_paths[scenario.path]) == {"post"}
        # The route's docstring is the explanation the dashboard shows.
        assert schema_paths[scenario.path]["post"]["description"] == scenario.explanation


@pytest.mark.parametrize("path", PATHS)
def test_get_is_405(demo_client: TestClient, path: str) -> None:
    assert demo_client.get(path, headers=HTMX).status_code == 405


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-htmx-header"),
        pytest.param({"HX-Request": "false"}, id="htmx-false"),
        pytest.param({**HTMX, "Sec-Fetch-Site": "cross-site"}, id="sec-fetch-cross-site"),
        pytest.param({**HTMX, "Sec-Fetch-Site": "same-site"}, id="sec-fetch-same-site"),
        pytest.param({**HTMX, "Origin": "http://127.0.0.2:9999"}, id="foreign-origin"),
        pytest.param({**HTMX, "Origin": "https://testserver"}, id="other-scheme"),
        pytest.param({**HTMX, "Origin": "null"}, id="null-origin"),
        # What a plain HTML form on another site sends: no custom header, a foreign Origin.
        pytest.param(
            {"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"},
            id="cross-site-form",
        ),
    ],
)
def test_cross_site_requests_are_refused_and_take_nothing(
    demo_client: TestClient, headers: dict[str, str]
) -> None:
    engine = demo_client.app.state.engine  # type: ignore[attr-defined]
    before = engine.pool.checkedout()
    for path in ("/demo/leak", "/demo/exhaust", "/demo/slow-query"):
        response = demo_client.post(path, headers=headers)
        assert response.status_code == 403, (path, response.text)
        assert response.json()["detail"].startswith("demo refused")
    assert engine.pool.checkedout() == before
    assert demo_client.app.state.demo_holdings.held == 0  # type: ignore[attr-defined]


def test_refusal_comes_before_parameter_validation(demo_client: TestClient) -> None:
    response = demo_client.post(
        "/demo/slow-query", params={"seconds": 999}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert response.status_code == 403


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(HTMX, id="htmx"),
        pytest.param(
            {**HTMX, "Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
            id="browser-htmx",
        ),
        pytest.param({"X-Requested-With": "XMLHttpRequest"}, id="x-requested-with"),
        pytest.param({**HTMX, "Origin": "http://testserver:80"}, id="default-port-origin"),
        pytest.param({**HTMX, "Sec-Fetch-Site": "none"}, id="typed-by-the-user"),
    ],
)
def test_same_origin_htmx_post_is_accepted(
    demo_client: TestClient, headers: dict[str, str]
) -> None:
    response = demo_client.post("/demo/leak", params={"hold_s": 1}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["held"] == 1
    assert demo_client.post("/demo/release", headers=headers).json()["released"] == 1
