"""Client-side deadlines on libpq sockets.

statement_timeout is enforced by the server, so it cannot end a wait on a server that stopped
answering (a hung host, a half-open network path). Shutting a duplicate of the socket down makes
libpq's blocked read fail at once. One daemon thread watches every armed deadline.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from typing import Any


class SocketDeadline:
    """One deadline over the sockets of the DBAPI connections attached to it; the clock starts at
    the first `attach`. `fired` tells whether it had to cut them."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.fired = False
        self._expires_at: float | None = None
        self._tokens: list[int] = []

    def attach(self, dbapi_connection: Any) -> None:
        if self._expires_at is None:
            self._expires_at = time.monotonic() + self.timeout_s
        token = _WATCHDOG.arm(dbapi_connection, self._expires_at, self)
        if token is not None:
            self._tokens.append(token)

    def close(self) -> None:
        """Disarm: call before the connections are closed, so no descriptor is watched late."""
        for token in self._tokens:
            _WATCHDOG.disarm(token)
        self._tokens.clear()


class _Watchdog:
    def __init__(self) -> None:
        # token -> (expiry, duplicate of the watched socket, owner)
        self._armed: dict[int, tuple[float, socket.socket, SocketDeadline]] = {}
        self._tokens = itertools.count(1)
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._sleeping_until = 0.0  # when the thread wakes up next by itself

    def arm(self, dbapi_connection: Any, expires_at: float, owner: SocketDeadline) -> int | None:
        try:
            # A duplicate of our own: libpq may close its descriptor (and the number be reused)
            # while the deadline runs; the duplicate keeps pointing at this socket.
            watched = socket.socket(fileno=os.dup(dbapi_connection.fileno()))
        except Exception:
            return None  # no socket (already closed): nothing can hang on it
        token = next(self._tokens)
        with self._wake:
            self._armed[token] = (expires_at, watched, owner)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="socket-deadline", daemon=True
                )
                self._thread.start()
            elif expires_at < self._sleeping_until:
                # Waking the thread for every deadline would cost a thread switch per request.
                self._wake.notify()
        return token

    def disarm(self, token: int) -> None:
        with self._wake:
            entry = self._armed.pop(token, None)
        if entry is not None:
            entry[1].close()

    def _run(self) -> None:
        with self._wake:
            while True:
                now = time.monotonic()
                for token, (expires_at, watched, owner) in list(self._armed.items()):
                    if expires_at <= now:
                        del self._armed[token]
                        owner.fired = True
                        with contextlib.suppress(OSError):  # already disconnected
                            watched.shutdown(socket.SHUT_RDWR)
                        watched.close()
                self._sleeping_until = min(
                    (e for e, _, _ in self._armed.values()), default=now + 60
                )
                self._wake.wait(max(0.01, self._sleeping_until - now))


_WATCHDOG = _Watchdog()
