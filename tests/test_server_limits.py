"""`pool-monitor serve`'s production limits, against the real uvicorn in a child process."""

from __future__ import annotations

import resource
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest
from sqlalchemy.engine import URL

from tests.conftest import url_string
from tests.servers import AppProcess, answers, wait_for

FD_LIMIT = 128


@contextmanager
def limited_app(env: dict[str, str], fd_limit: int = FD_LIMIT) -> Iterator[AppProcess]:
    """`serve` with a low open-files limit, as a small container would give it."""

    def lower_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    app = AppProcess("serve", env, preexec_fn=lower_limit)
    try:
        app.wait_ready(timeout_s=90)
        yield app
    finally:
        app.stop()


def _idle_connections(port: int, count: int, stack: ExitStack) -> list[socket.socket]:
    """Connect `count` sockets that never send a byte (a slow or idle client each)."""
    opened = []
    for _ in range(count):
        sock = stack.enter_context(socket.socket())
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            continue  # the listen queue is full: the server is already saturated
        opened.append(sock)
    return opened


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_idle_connections_beyond_the_descriptor_limit_do_not_take_the_app_down(
    schema_url: URL,
) -> None:
    env = {"DATABASE_URL": url_string(schema_url), "MONITOR_HEADER_TIMEOUT_S": "2"}
    with limited_app(env) as app, ExitStack() as stack:
        idle = _idle_connections(app.port, 2 * FD_LIMIT, stack)
        assert len(idle) > FD_LIMIT // 2
        # The idle connections stay open on this side: the server must shed them itself.
        assert wait_for(lambda: answers(app.base + "/healthz"), 60, 0.5), "healthz never answered"
        assert answers(app.base + "/metrics")
        closed_by_server = sum(1 for sock in idle if _closed_by_peer(sock))
        assert closed_by_server == len(idle)
    lines = app.output.splitlines()
    assert len(lines) < 200, f"{len(lines)} log lines:\n" + "\n".join(lines[-40:])
    assert "Traceback" not in app.output


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_out_of_descriptors_logs_a_few_lines_not_a_flood(schema_url: URL) -> None:
    # A cap set above the open-files limit: accept() itself runs out of descriptors.
    env = {
        "DATABASE_URL": url_string(schema_url),
        "MONITOR_HEADER_TIMEOUT_S": "5",
        "MONITOR_MAX_CONNECTIONS": "4096",
    }
    with limited_app(env) as app, ExitStack() as stack:
        idle = _idle_connections(app.port, 2 * FD_LIMIT, stack)
        assert idle
        assert wait_for(lambda: answers(app.base + "/healthz"), 60, 0.5), "healthz never answered"
    lines = app.output.splitlines()
    flood = [line for line in lines if "open files" in line or "system resource" in line]
    assert len(lines) < 200, f"{len(lines)} log lines:\n" + "\n".join(lines[-40:])
    assert len(flood) <= 10, flood


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, TimeoutError):
        return True  # reset: refused at once beyond the cap (a timeout means still open)
    except OSError:
        return True


@pytest.fixture
def served(schema_url: URL) -> Iterator[AppProcess]:
    env = {"DATABASE_URL": url_string(schema_url), "MONITOR_MAX_BODY_BYTES": "65536"}
    app = AppProcess("serve", env)
    try:
        app.wait_ready(timeout_s=90)
        yield app
    finally:
        app.stop()


def test_a_body_over_the_limit_is_refused_with_413_json(served: AppProcess) -> None:
    big = b'{"name": "' + b"x" * 200_000 + b'", "price": "1"}'
    with httpx.Client(base_url=served.base, timeout=30) as client:
        declared = client.post(
            "/products", content=big, headers={"content-type": "application/json"}
        )
        assert declared.status_code == 413
        assert declared.json() == {"detail": "request body larger than 65536 bytes"}

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for start in range(0, len(big), 16_384):
                yield big[start : start + 16_384]

        streamed = client.post(
            "/products", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        assert streamed.json()["detail"].startswith("request body larger than")
        small = client.post("/products", json={"name": "ok", "price": "1"})
        assert small.status_code == 201
    assert "Traceback" not in served.output
