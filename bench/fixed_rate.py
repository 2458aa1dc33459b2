"""A fixed-rate (open-loop) HTTP/1.1 load: requests leave on a schedule, whatever the answers do.

A closed-loop load (wrk: each connection sends its next request when the last one is answered)
at saturation measures queueing: with c connections the latency is about c / throughput, so its
p99 restates the throughput and scales with the chosen c. Here request i is due at
start + i / rate; its latency is counted from that due time, not from when a connection was free
to send it, so a slow answer delays the count of every request queued behind it (no
coordinated omission). Keep-alive connections are reused; a new one is opened when every open
one is busy, up to `max_connections`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit

from monitor.demo.load import nearest_rank

REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class FixedRateResult:
    """Latencies in seconds, in the order the requests were due (a failed request counts until
    it failed); `errors`: what went wrong how often, most frequent first (("HTTP 503", 4), ...)."""

    latencies_s: tuple[float, ...]
    errors: tuple[tuple[str, int], ...]
    connections: int  # most connections open at once
    late_s: float  # how far behind its schedule the sender fell at worst (then it catches up)

    @property
    def failed(self) -> int:
        return sum(count for _, count in self.errors)

    def percentile_ms(self, fraction: float) -> float:
        """Nearest rank: a latency that was measured (0.99 for the p99)."""
        return nearest_rank(sorted(self.latencies_s), fraction) * 1000


class _Connections:
    """Idle keep-alive connections; new ones up to a bound, then callers wait for a free one."""

    def __init__(self, host: str, port: int, max_connections: int) -> None:
        self._host = host
        self._port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._free = asyncio.Semaphore(max_connections)
        self.open = 0
        self.most_open = 0

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        await self._free.acquire()
        if self._idle:
            return self._idle.pop()
        try:
            connection = await asyncio.open_connection(self._host, self._port)
        except BaseException:
            self._free.release()
            raise
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        return connection

    def give_back(
        self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], reusable: bool
    ) -> None:
        if reusable:
            self._idle.append(connection)
        else:
            connection[1].close()
            self.open -= 1
        self._free.release()

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


def _request_bytes(method: str, url: str, body: bytes | None) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"only http:// URLs: {url!r}")
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: keep-alive"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return parts.hostname, parts.port or 80, head + (body or b"")


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bool]:
    """Send one request, read its whole answer: (status, whether the connection stays open)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" not in headers:
        raise ValueError("an answer without Content-Length")  # the demo app always sends one
    await reader.readexactly(int(headers["content-length"]))
    return status, headers.get("connection", "").lower() != "close"


async def fixed_rate(
    url: str,
    rate: float,
    seconds: float,
    *,
    method: str = "GET",
    body: bytes | None = None,
    max_connections: int = 64,
) -> FixedRateResult:
    """`rate` requests per second to `url` for `seconds`; returns when the last one is answered."""
    if rate <= 0 or seconds <= 0:
        raise ValueError("rate and seconds must be positive")
    host, port, request = _request_bytes(method, url, body)
    connections = _Connections(host, port, max_connections)
    count = max(1, round(rate * seconds))
    latencies: list[float] = [0.0] * count
    errors: Counter[str] = Counter()

    async def one(index: int, due: float) -> None:
        connection = None
        reusable = False
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                connection = await connections.take()
                status, reusable = await _exchange(*connection, request)
            if not 200 <= status < 300:
                errors[f"HTTP {status}"] += 1
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError) as error:
            errors[type(error).__name__] += 1
            reusable = False
        finally:
            latencies[index] = time.perf_counter() - due
            if connection is not None:
                connections.give_back(connection, reusable)

    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()

    def launch(index: int, due: float) -> None:
        tasks.append(loop.create_task(one(index, due)))

    def send_on_schedule() -> float:
        """In a thread: `time.sleep` wakes within tens of microseconds, the event loop's timers
        only within a millisecond (epoll). Returns how far behind schedule it fell at worst."""
        late_s = 0.0
        start = time.perf_counter() + 0.01
        for index in range(count):
            due = start + index / rate
            wait_s = due - time.perf_counter()
            if wait_s > 0:
                time.sleep(wait_s)
            else:
                late_s = max(late_s, -wait_s)
            loop.call_soon_threadsafe(launch, index, due)
        return late_s

    try:
        # The thread's result is delivered after every `launch` it scheduled: all tasks exist.
        late_s = await asyncio.to_thread(send_on_schedule)
        await asyncio.gather(*tasks)
    finally:
        connections.close()
    return FixedRateResult(
        tuple(latencies), tuple(errors.most_common()), connections.most_open, late_s
    )
