"""Security headers on every monitor response, and a CSP the dashboard's own scripts pass."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from monitor.app import create_app
from monitor.settings import Settings
from tests.web.conftest import serve

MONITOR_URLS = [
    "/monitor/",
    "/monitor/partials",
    "/monitor/partials/held",
    "/monitor/api/snapshot",
    "/monitor/static/app.css",
]


@pytest.mark.parametrize("url", MONITOR_URLS)
def test_every_monitor_response_carries_the_headers(client: TestClient, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 200
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "same-origin"
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "script-src 'self' https://cdn.jsdelivr.net 'nonce-" in csp
    assert "unsafe-eval" not in csp and "script-src 'unsafe-inline'" not in csp


def test_refusals_carry_them_too(app_settings: Settings) -> None:
    app = create_app(app_settings.model_copy(update={"dashboard_token": "t0ken-0123456789"}))
    with TestClient(app) as client:
        page = client.get("/monitor/", headers={"Accept": "text/html"})
        assert page.status_code == 401 and page.headers["x-frame-options"] == "DENY"


def test_every_script_is_a_file_or_carries_this_responses_nonce(client: TestClient) -> None:
    first, second = client.get("/monitor/"), client.get("/monitor/")
    nonce = first.headers["content-security-policy"].split("'nonce-")[1].split("'")[0]
    scripts = re.findall(r"<script[^>]*>", first.text)
    assert scripts
    for tag in scripts:
        assert " src=" in tag or f'nonce="{nonce}"' in tag, tag
    assert nonce not in second.headers["content-security-policy"]  # one per response


@pytest.mark.browser
def test_dashboard_polls_with_no_csp_violation_and_cannot_be_framed(
    app_settings: Settings, new_page: Callable[[], Any]
) -> None:
    app: FastAPI = create_app(app_settings.model_copy(update={"demo_routes": True}))
    with serve(app) as base_url:
        page = new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        page.add_init_script(
            "window.__violations = [];"
            "document.addEventListener('securitypolicyviolation', e =>"
            " window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
        )
        polls: list[str] = []
        page.on(
            "requestfinished",
            lambda request: (
                polls.append(request.url) if request.url == f"{base_url}/monitor/partials" else None
            ),
        )
        page.goto(f"{base_url}/monitor/")
        page.wait_for_function("() => window.htmx !== undefined", timeout=30_000)
        # Two polls through: htmx ran under the policy (a refused eval would show below).
        page.wait_for_function(
            "() => performance.getEntriesByType('resource')"
            ".filter(e => e.name.endsWith('/monitor/partials')).length >= 2",
            timeout=30_000,
        )
        assert page.evaluate("window.__violations") == []
        assert not [text for text in console if "Content Security Policy" in text], console
        assert len(polls) >= 1

        # Framed by another origin: the browser refuses to show it.
        framing = new_page()
        framing.set_content(f'<iframe src="{base_url}/monitor/"></iframe>')  # waits for load
        frames = [frame for frame in framing.frames if frame != framing.main_frame]
        assert frames
        shown = frames[0].evaluate("() => document.querySelectorAll('#poller').length")
        assert shown == 0, "the dashboard rendered inside a foreign frame"
