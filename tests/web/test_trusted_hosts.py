"""Host checks: IPv6 loopback works by default, health checks and scrapes pass any Host."""

from __future__ import annotations

import socket

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL

from monitor.web.trusted_hosts import host_name, is_allowed
from tests.conftest import url_string
from tests.servers import AppProcess, answers, wait_for


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("[::1]:8000", "::1"),
        ("[::1]", "::1"),
        ("127.0.0.1:8000", "127.0.0.1"),
        ("LocalHost", "localhost"),
        ("::1", "::1"),
        ("[", ""),
        ("", ""),
    ],
)
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


def test_patterns() -> None:
    assert is_allowed("::1", ["127.0.0.1", "::1"])
    assert is_allowed("::1", ["[::1]"])
    assert is_allowed("a.example.com", ["*.example.com"])
    assert not is_allowed("example.com.evil", ["*.example.com"])
    assert is_allowed("anything", ["*"])
    assert not is_allowed("", ["localhost"])


@pytest.mark.parametrize("host", ["[::1]:8000", "127.0.0.1:8000", "localhost:8000", "localhost"])
def test_default_hosts_are_answered(client: TestClient, host: str) -> None:
    response = client.get("/monitor/api/snapshot", headers={"Host": host})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "[::2]:8000", "10.0.0.7"])
def test_other_hosts_are_refused_with_json(client: TestClient, host: str) -> None:
    for path in ("/monitor/", "/monitor/api/snapshot", "/products"):
        response = client.get(path, headers={"Host": host})
        assert response.status_code == 400
        assert response.json() == {"detail": "invalid Host header"}


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/readyz"])
def test_probes_and_scrapes_pass_with_a_pod_ip(client: TestClient, path: str) -> None:
    # kubelet and Prometheus pod discovery send the pod's IP as Host.
    assert client.get(path, headers={"Host": "10.42.0.17:8000"}).status_code == 200


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.timeout(120)
@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_serve_on_ipv6_loopback_answers_a_browser(schema_url: URL) -> None:
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        port = sock.getsockname()[1]
    env = {"DATABASE_URL": url_string(schema_url)}
    app = AppProcess("serve", env, "--host", "::1", "--port", str(port))  # the last --port wins
    base = f"http://[::1]:{port}"
    try:
        assert wait_for(lambda: answers(base + "/healthz"), 90, 0.2), "no answer on [::1]"
        # httpx sends "Host: [::1]:port", as a browser does.
        page = httpx.get(base + "/monitor/", timeout=30)
        assert page.status_code == 200, page.text[:300]
        assert httpx.get(base + "/monitor/api/snapshot", timeout=30).status_code == 200
    finally:
        app.stop()
