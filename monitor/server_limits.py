"""Limits a production HTTP server needs, for `pool-monitor serve` under uvicorn.

uvicorn closes a keep-alive connection after `timeout_keep_alive`, but waits for ever for the
head of a request: idle or slow clients then hold a descriptor each until the process has none
left. `GuardedH11Protocol` closes a connection whose request head does not arrive in time and
refuses connections beyond a cap kept below the process's open-files limit.
"""

from __future__ import annotations

import asyncio
import resource
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

# Descriptors kept free of client connections: database connections, the probe, logs, files.
MIN_RESERVED_FDS = 32
MAX_HEAD_BYTES = 64 * 1024  # a request head larger than this is refused by h11 (400)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What `serve` sets; `max_connections=0` derives the cap from the open-files limit."""

    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_connections: int = 0
    backlog: int = 1024

    def connection_cap(self) -> int:
        return self.max_connections or derived_connection_cap()


def derived_connection_cap() -> int:
    """Three quarters of the soft open-files limit (the rest stays free), at least 8."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        soft = 65536
    return max(8, min(soft - max(MIN_RESERVED_FDS, soft // 4), 65536))


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline and a connection cap (class attributes,
    set on a subclass by `guarded_protocol`)."""

    header_timeout_s: float = 10.0
    max_connections: int = 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            # Refused at once (a reset frees the descriptor now) rather than queued: the cap is
            # there so that accept() never meets an exhausted descriptor table.
            transport.abort()
            return
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            # The head of a request is still incomplete (uvicorn's keep-alive timer is off now).
            if self._head_timer is None:
                self._arm_head_timer()
        else:
            self._cancel_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(limits: ServerLimits) -> type[GuardedH11Protocol]:
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {
            "header_timeout_s": limits.header_timeout_s,
            "max_connections": limits.connection_cap(),
            "__module__": __name__,
        },
    )


def uvicorn_options(limits: ServerLimits) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config` that apply `limits`."""
    cap = limits.connection_cap()
    return {
        "http": guarded_protocol(limits),
        "timeout_keep_alive": max(1, round(limits.keep_alive_s)),
        "limit_concurrency": cap,
        "backlog": limits.backlog,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
    }
