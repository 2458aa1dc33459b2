"""Running the app for tests that need a real HTTP server: in a thread or as a process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll until `predicate()` holds (an exception counts as not yet); False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            if predicate():
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)


def answers(url: str, status: int = 200) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == status
    except httpx.TransportError:
        return False


class InFlight:
    """ASGI wrapper counting the HTTP requests the app is still answering (a client that gave up
    on one leaves the app working on it)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.count = 0  # changed on the server's event loop only

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.count -= 1


@contextmanager
def serve_in_thread(app: Any, *, startup_timeout_s: float = 20.0) -> Iterator[str]:
    """Run `app` with uvicorn in a daemon thread (lifespan included); yields its base URL."""
    port = free_port()
    # A browser that keeps polling must not hold the shutdown: in-flight requests get 5 s.
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    if not wait_for(lambda: server.started or not thread.is_alive(), startup_timeout_s):
        server.should_exit = True
        raise AssertionError(f"uvicorn did not start on port {port} within {startup_timeout_s} s")
    assert server.started, "uvicorn stopped during startup"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "uvicorn did not stop within 15 s"


class AppProcess:
    """`python -m monitor <command>` as a child process on a free loopback port."""

    def __init__(
        self,
        command: str,
        env: dict[str, str],
        *extra: str,
        preexec_fn: Callable[[], None] | None = None,
        port_from_env: bool = False,
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        port_args = [] if port_from_env else ["--port", str(self.port)]
        port_env = {"PORT": str(self.port)} if port_from_env else {}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "monitor", command, *port_args, *extra],
            env={**os.environ, **env, **port_env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=preexec_fn,  # e.g. a lower open-files limit for the child only
        )
        # Read as it comes, so a test can wait for a line while the app runs.
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name="app-output", daemon=True)
        self._reader.start()
        self.output = ""

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line)

    def output_so_far(self) -> str:
        return "".join(self._lines)

    def wait_for_output(self, text: str, timeout_s: float = 30.0) -> bool:
        """Until `text` appears in the app's output (bounded); False if it never did."""
        return wait_for(lambda: text in self.output_so_far(), timeout_s, 0.1)

    def wait_ready(self, path: str = "/healthz", timeout_s: float = 30.0) -> None:
        if not wait_for(
            lambda: answers(self.base + path) or self.process.poll() is not None, timeout_s, 0.2
        ):
            raise AssertionError(f"{self.base}{path} did not answer within {timeout_s} s")
        if self.process.poll() is not None:
            self._reader.join(5)
            raise AssertionError(f"the app exited early:\n{self.output_so_far()[-3000:]}")

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, wait, collect the output; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self._reader.join(5)
        self.output = self.output_so_far()
        return self.process.returncode


@contextmanager
def app_process(command: str, env: dict[str, str], *extra: str) -> Iterator[AppProcess]:
    app = AppProcess(command, env, *extra)
    try:
        app.wait_ready()
        yield app
    finally:
        app.stop()
