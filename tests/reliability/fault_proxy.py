"""A TCP fault proxy for tests: a loopback listener forwarding to a TCP or Unix-socket target.

It runs its own asyncio loop in a daemon thread, so a test can switch modes while it is blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

# pass: forward both ways. latency: forward, each chunk delayed by a fixed time.
# blackhole: accept, read and drop, never answer; open connections stall. Leaving it resets every
#   connection that lived through it: bytes were dropped, so the PostgreSQL protocol stream
#   cannot resume (a client would wait for ever for the reply to a lost query).
# reset: RST every open connection now; new ones are accepted and RST at once.
# refuse: stop listening (ECONNREFUSED); open connections are left alone.
Mode = Literal["pass", "latency", "blackhole", "reset", "refuse"]
MODES: tuple[Mode, ...] = ("pass", "latency", "blackhole", "reset", "refuse")
_CHUNK = 65536
_CONTROL_TIMEOUT_S = 5.0


@dataclass(eq=False)
class _Link:
    """One proxied client connection and, unless blackholed at accept, its upstream."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    saw_blackhole: bool = False


class FaultProxy:
    """Listens on 127.0.0.1:<free port> and forwards to ``target`` (``(host, port)`` or a path)."""

    def __init__(self, target: tuple[str, int] | str, *, connect_timeout_s: float = 5.0) -> None:
        self.target = target
        self.connect_timeout_s = connect_timeout_s
        self.port = 0  # chosen by the kernel at the first listen, kept for later re-listens
        self.mode: Mode = "pass"
        self.latency_s = 0.0
        self.accepted = 0  # connections accepted since start, any mode
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    # ---- control (any thread) ----------------------------------------------------------------

    def start(self, timeout_s: float = _CONTROL_TIMEOUT_S) -> FaultProxy:
        """Start the loop thread and listen; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            # Let cancelled tasks finish their cleanup before the loop goes away.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s):
            raise TimeoutError("fault proxy loop did not start")
        self._call(self._listen(), timeout_s)
        return self

    def stop(self, timeout_s: float = _CONTROL_TIMEOUT_S) -> None:
        """Close the listener and every connection, stop the loop, join the thread (bounded)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown(), timeout_s)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)
        if thread.is_alive():
            raise TimeoutError("fault proxy thread did not stop")
        self._loop = self._thread = None

    def set_mode(self, mode: Mode, latency_s: float = 0.0) -> None:
        """Switch mode; effects on open connections are applied before this returns."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if latency_s < 0:
            raise ValueError("latency_s must not be negative")
        self._call(self._apply(mode, latency_s), _CONTROL_TIMEOUT_S)

    def pass_through(self) -> None:
        self.set_mode("pass")

    def latency(self, seconds: float) -> None:
        self.set_mode("latency", seconds)

    def blackhole(self) -> None:
        self.set_mode("blackhole")

    def reset(self) -> None:
        self.set_mode("reset")

    def refuse(self) -> None:
        self.set_mode("refuse")

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, None], timeout_s: float) -> None:
        if self._loop is None:
            coro.close()
            raise RuntimeError("proxy not started")
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    # ---- loop side -----------------------------------------------------------------------------

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _apply(self, mode: Mode, latency_s: float) -> None:
        previous = self.mode
        self.mode, self.latency_s = mode, latency_s
        if mode == "refuse":
            await self._unlisten()
            return
        await self._listen()
        if mode == "reset":
            for link in list(self._links):
                self._abort(link)
        elif previous == "blackhole" and mode != "blackhole":
            for link in list(self._links):
                if link.saw_blackhole:
                    self._abort(link)
        elif mode == "blackhole":
            for link in self._links:
                link.saw_blackhole = True

    async def _shutdown(self) -> None:
        await self._unlisten()
        for link in list(self._links):
            self._abort(link)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer)
        if self.mode == "reset":
            self._abort(link)
            return
        self._links.add(link)
        try:
            if self.mode == "blackhole":
                link.saw_blackhole = True
                await self._drain_forever(reader)
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    self._open_upstream(), self.connect_timeout_s
                )
            except (OSError, TimeoutError):
                self._abort(link)
                return
            link.upstream = up_writer
            link.tasks = [
                asyncio.create_task(self._pump(reader, up_writer, link)),
                asyncio.create_task(self._pump(up_reader, writer, link)),
            ]
            # When one direction ends, end the other: a half-closed link is of no use here.
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
            self._abort(link)
        finally:
            self._links.discard(link)

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.target, str):
            return await asyncio.open_unix_connection(self.target)
        host, port = self.target
        return await asyncio.open_connection(host, port)

    async def _drain_forever(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(_CHUNK):
                pass

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: _Link
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await source.read(_CHUNK)
                if not data:
                    return
                if self.mode == "blackhole":
                    link.saw_blackhole = True
                    continue  # read and drop
                if self.mode == "latency" and self.latency_s > 0:
                    await asyncio.sleep(self.latency_s)
                sink.write(data)
                await sink.drain()

    def _abort(self, link: _Link) -> None:
        for writer in (link.client, link.upstream):
            if writer is not None:
                _rst(writer)
        for task in link.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self._links.discard(link)


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN: linger 0, then abort (discards anything unsent)."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
