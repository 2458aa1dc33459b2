"""The fixed-rate load of `bench/overhead.py`, against small loopback servers with known timing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from bench.fixed_rate import FixedRateResult, fixed_rate

Handler = Callable[[bytes, bytes], Awaitable[tuple[int, bytes]]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, str]:
    """A keep-alive HTTP/1.1 server on loopback; `handler(request head, body)` answers."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                status, answer = await handler(head, body)
                writer.write(
                    b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(answer), answer)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/items/7"


def _run(
    handler: Handler, rate: float, seconds: float, **options: object
) -> tuple[FixedRateResult, float]:
    """Serve `handler` and load it; returns the result and how long the load took."""

    async def main() -> tuple[FixedRateResult, float]:
        server, url = await _serve(handler)
        started = time.perf_counter()
        try:
            result = await fixed_rate(url, rate, seconds, **options)  # type: ignore[arg-type]
        finally:
            server.close()
        return result, time.perf_counter() - started

    return asyncio.run(main())


@pytest.mark.timeout(30)
def test_requests_leave_on_schedule_and_carry_their_body() -> None:
    seen: list[tuple[float, bytes, bytes]] = []

    async def answer(head: bytes, body: bytes) -> tuple[int, bytes]:
        seen.append((time.perf_counter(), head.split(b"\r\n", 1)[0], body))
        return 201, b'{"id": 1}'

    result, took_s = _run(answer, rate=100, seconds=0.5, method="POST", body=b'{"name": "x"}')

    assert len(result.latencies_s) == len(seen) == 50
    assert result.failed == 0 and result.errors == ()
    assert {line for _, line, _ in seen} == {b"POST /items/7 HTTP/1.1"}
    assert {body for _, _, body in seen} == {b'{"name": "x"}'}
    # Not sent as fast as the server answers: the last request was due 0.49 s after the first.
    # Only lower bounds: a busy machine makes the run longer, never shorter.
    assert took_s >= 0.49
    assert result.connections < len(seen)  # kept alive and reused


@pytest.mark.timeout(30)
def test_latency_counts_from_when_a_request_was_due_not_when_it_was_sent() -> None:
    # The server takes 20 ms per request and the client may use one connection only: requests
    # due every 10 ms queue behind each other. Counted from sending, each would take ~20 ms.
    async def slow(head: bytes, body: bytes) -> tuple[int, bytes]:
        await asyncio.sleep(0.02)
        return 200, b"{}"

    result, _ = _run(slow, rate=100, seconds=0.5, max_connections=1)

    assert result.connections == 1
    # The last request was due at 0.49 s and cannot be answered before 50 x 20 ms = 1.0 s of
    # serial work: at least 0.51 s late, whatever the machine's load.
    assert result.latencies_s[-1] > 0.5
    assert result.percentile_ms(0.99) > 500
    assert result.latencies_s[-1] > result.latencies_s[0]


@pytest.mark.timeout(30)
def test_answers_outside_2xx_are_counted_as_errors() -> None:
    async def refuse(head: bytes, body: bytes) -> tuple[int, bytes]:
        return 503, b'{"detail": "busy"}'

    result, _ = _run(refuse, rate=50, seconds=0.2)

    assert result.errors == (("HTTP 503", 10),)
    assert result.failed == len(result.latencies_s) == 10


@pytest.mark.timeout(30)
def test_a_refused_connection_is_an_error_per_request_not_a_crash() -> None:
    async def main() -> FixedRateResult:
        server, url = await _serve(lambda head, body: asyncio.sleep(0, (200, b"")))
        server.close()
        await server.wait_closed()  # nothing listens on the port any more
        return await fixed_rate(url, 50, 0.2)

    result = asyncio.run(main())

    assert result.errors == (("ConnectionRefusedError", 10),)  # refused, not timed out
