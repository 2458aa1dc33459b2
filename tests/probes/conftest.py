"""Probe fixtures: probes that clean up after themselves, and network faults on loopback."""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL

from monitor.probes.runner import ServerProbe
from monitor.state.server import ServerHealth

ProbeFactory = Callable[..., ServerProbe]


@pytest.fixture
def make_probe() -> Iterator[ProbeFactory]:
    """Builds ServerProbes with a unique application_name; closes every one afterwards."""
    probes: list[ServerProbe] = []

    def make(url: URL | str, **kwargs: Any) -> ServerProbe:
        kwargs.setdefault("application_name", f"pm-probe-{uuid.uuid4().hex[:8]}")
        probe = ServerProbe(url, kwargs.pop("health", None) or ServerHealth(), **kwargs)
        probes.append(probe)
        return probe

    yield make
    for probe in probes:
        probe.close()


@pytest.fixture
def admin_engine(database_url: URL) -> Iterator[Engine]:
    """An autocommit engine on the server under test, for setup and for checking the probe."""
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


class BlackholeListener:
    """A loopback port whose kernel completes the TCP handshake, then nobody ever answers."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(8)  # never accept(): clients sit in the backlog, unanswered
        self.port: int = self._socket.getsockname()[1]

    def close(self) -> None:
        self._socket.close()


@pytest.fixture
def blackhole() -> Iterator[BlackholeListener]:
    listener = BlackholeListener()
    yield listener
    listener.close()


class FaultProxy:
    """TCP proxy to the database that can start dropping every byte (a half-open network)."""

    def __init__(self, upstream: Callable[[], socket.socket]) -> None:
        self._upstream = upstream
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self.dropping = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept_loop)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = self._upstream()
            with self._lock:
                self._sockets += [client, server]
            self._spawn(self._pump, client, server)
            self._spawn(self._pump, server, client)

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if not self.dropping.is_set():
                    target.sendall(data)
        except OSError:
            pass
        finally:
            # One side gone: close both so the server backend ends too.
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in threads:
            thread.join(timeout=2)


def _upstream_connector(url: URL) -> Callable[[], socket.socket]:
    host = url.query.get("host")
    port = url.port or 5432
    if isinstance(host, str) and host.startswith("/"):
        path = f"{host}/.s.PGSQL.{port}"

        def connect_unix() -> socket.socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            return sock

        return connect_unix
    address = (url.host or "127.0.0.1", port)

    def connect_tcp() -> socket.socket:
        sock = socket.create_connection(address, timeout=5)
        sock.settimeout(None)  # the pumps block until either side goes away
        return sock

    return connect_tcp


@pytest.fixture
def fault_proxy(database_url: URL) -> Iterator[tuple[FaultProxy, URL]]:
    """A FaultProxy in front of the server under test and the URL that goes through it."""
    proxy = FaultProxy(_upstream_connector(database_url))
    url = database_url.difference_update_query(["host"]).set(host="127.0.0.1", port=proxy.port)
    yield proxy, url
    proxy.close()
