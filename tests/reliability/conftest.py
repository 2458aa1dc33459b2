"""Reliability fixtures: an app served over real HTTP, a bounded CRUD load, private servers, a proxy.

Every helper is bounded in time and stops what it started: a regression fails, never hangs.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL

from monitor.app import create_app
from monitor.embedded import EmbeddedPostgres
from monitor.settings import Settings
from tests.reliability.fault_proxy import FaultProxy
from tests.servers import free_port, wait_for  # noqa: F401 - re-exported to the suite

STARTUP_TIMEOUT_S = 90.0  # a busy machine starts a Python process slowly
SHUTDOWN_TIMEOUT_S = 10.0


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


# ---- an app served by uvicorn in a thread of this process -------------------------------------


@dataclass
class Served:
    app: FastAPI
    base: str
    server: uvicorn.Server

    @property
    def engine(self) -> Engine:
        engine: Engine = self.app.state.engine
        return engine

    @property
    def monitor(self) -> Any:
        return self.app.state.pool_monitor


@contextmanager
def serve_app(settings: Settings, *, graceful_s: int = 3) -> Iterator[Served]:
    """`create_app(settings)` served on a free loopback port; stopped (bounded) on exit."""
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        # No logging config of uvicorn's own: its records then reach the root logger (caplog).
        log_config=None,
        lifespan="on",
        # A request stuck on a dead database must not stall the test's teardown for ever.
        timeout_graceful_shutdown=graceful_s,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn exited during startup")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"uvicorn did not start within {STARTUP_TIMEOUT_S} s")
            time.sleep(0.02)
        yield Served(app, f"http://127.0.0.1:{port}", server)
    finally:
        server.should_exit = True
        thread.join(SHUTDOWN_TIMEOUT_S)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)


# ---- `pool-monitor serve` as a subprocess -----------------------------------------------------


@dataclass
class ServedProcess:
    process: subprocess.Popen[str]
    base: str
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def serve_process(env: Mapping[str, str], log_dir: Path) -> Iterator[ServedProcess]:
    """`pool-monitor serve` on a free port; killed (SIGKILL after a bounded SIGTERM) on exit."""
    port = free_port()
    log_path = log_dir / f"serve-{port}.log"
    script = Path(sys.executable).parent / "pool-monitor"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "monitor"]
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [*command, "serve", "--port", str(port)],
            env={**os.environ, **env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
    served = ServedProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited during startup:\n{served.output()[-3000:]}")
            try:
                if httpx.get(f"{served.base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"server did not answer within {STARTUP_TIMEOUT_S} s")
            time.sleep(0.1)
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


# ---- a bounded CRUD load from a pool of httpx clients -----------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request as the client saw it; times are `time.monotonic()`."""

    started: float
    ended: float
    method: str
    path: str
    status: int | None  # None: no HTTP answer (transport error or client timeout)
    error: str | None
    body: str  # the start of the body, kept for error answers only

    @property
    def elapsed(self) -> float:
        return self.ended - self.started

    @property
    def is_5xx(self) -> bool:
        return self.status is not None and self.status >= 500


class Load:
    """`threads` workers, each with its own httpx client, cycling a CRUD mix until stopped.

    Bounded: each worker stops at `max_duration_s` even if `stop()` is never called, and each
    request has a client timeout.
    """

    def __init__(
        self,
        base: str,
        threads: int,
        *,
        timeout_s: float = 15.0,
        max_duration_s: float = 60.0,
        pause_s: float = 0.0,
        prefix: str = "load",
    ) -> None:
        self.base = base
        self.threads = threads
        self.timeout_s = timeout_s
        self.max_duration_s = max_duration_s
        self.pause_s = pause_s
        self.prefix = prefix
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._counter = itertools.count()

    def start(self) -> Load:
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, name=f"load-{index}", daemon=True)
            self._workers.append(worker)
            worker.start()
        return self

    def stop(self, timeout_s: float | None = None) -> None:
        """Ask the workers to stop and join them; in-flight requests end within their timeout."""
        self._stop.set()
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.timeout_s + 5)
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        alive = [worker.name for worker in self._workers if worker.is_alive()]
        if alive:
            raise TimeoutError(f"load workers still running: {alive}")

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def _request(
        self, client: httpx.Client, method: str, path: str, body: dict[str, Any] | None = None
    ) -> httpx.Response | None:
        started = time.monotonic()
        try:
            response = client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            self._record(
                Outcome(started, time.monotonic(), method, path, None, type(exc).__name__, "")
            )
            return None
        ended = time.monotonic()
        kept = response.text[:500] if response.status_code >= 400 else ""
        self._record(Outcome(started, ended, method, path, response.status_code, None, kept))
        return response

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_duration_s
        with httpx.Client(base_url=self.base, timeout=self.timeout_s) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                n = next(self._counter)
                created = self._request(
                    client, "POST", "/products", {"name": f"{self.prefix}-{n}", "price": "1.50"}
                )
                if created is not None and created.status_code == 201:
                    self._request(client, "GET", f"/products/{created.json()['id']}")
                self._request(client, "GET", "/products?limit=5")
                if self.pause_s:
                    self._stop.wait(self.pause_s)


@dataclass
class Poller:
    """Requests one path at a fixed interval in a thread; records (start, seconds, status)."""

    base: str
    path: str
    interval_s: float = 0.1
    max_duration_s: float = 60.0

    def __post_init__(self) -> None:
        self.samples: list[tuple[float, float, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"poll{self.path}", daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_duration_s
        with httpx.Client(base_url=self.base, timeout=5) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    status: int | None = client.get(self.path).status_code
                except httpx.HTTPError:
                    status = None
                self.samples.append((started, time.monotonic() - started, status))
                self._stop.wait(self.interval_s)


# ---- databases ------------------------------------------------------------------------------


@pytest.fixture
def private_pg() -> Iterator[EmbeddedPostgres]:
    """An embedded PostgreSQL of this test alone, which the test may stop, crash and restart."""
    # A short path keeps the Unix socket path under the 107-byte limit.
    data_dir = Path("/tmp") / f"pm-rel-{uuid.uuid4().hex[:8]}"
    server = EmbeddedPostgres(data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop("immediate")  # cleanup() only stops it when it is running
        server.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def unix_socket_in(socket_dir: str) -> str:
    """The PostgreSQL Unix socket file in a directory (named after the server's port)."""
    sockets = sorted(Path(socket_dir).glob(".s.PGSQL.*[0-9]"))
    if not sockets:
        raise FileNotFoundError(f"no PostgreSQL socket in {socket_dir}")
    return str(sockets[0])


def proxy_target(url: URL) -> tuple[str, int] | str:
    """Where a proxy in front of `url`'s server connects: its TCP address or its Unix socket."""
    if url.host:
        return (url.host, url.port or 5432)
    return unix_socket_in(str(url.query["host"]))


def through_proxy(url: URL, proxy: FaultProxy) -> URL:
    """The same database reached over TCP through the proxy (query options kept)."""
    return url.difference_update_query(["host"]).set(host="127.0.0.1", port=proxy.port)


@pytest.fixture
def admin_engine(database_url: URL) -> Iterator[Engine]:
    """Autocommit engine on the shared server, for pg_stat_activity checks and termination."""
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT", pool_size=1)
    yield engine
    engine.dispose()


@pytest.fixture
def fault_proxy_factory() -> Iterator[Callable[[tuple[str, int] | str], FaultProxy]]:
    """Starts FaultProxies to a target; stops every one at teardown."""
    proxies: list[FaultProxy] = []

    def make(target: tuple[str, int] | str) -> FaultProxy:
        proxy = FaultProxy(target).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()
