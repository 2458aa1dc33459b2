"""The client-side deadline cuts a read that the peer never answers, and only then."""

from __future__ import annotations

import socket
import time

from monitor.socket_deadline import SocketDeadline


class Wrapped:
    """Stands for a DBAPI connection: the deadline only needs its fileno()."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def fileno(self) -> int:
        return self._sock.fileno()


def test_blocked_read_ends_at_the_deadline() -> None:
    ours, silent_peer = socket.socketpair()
    with ours, silent_peer:
        deadline = SocketDeadline(0.3)
        deadline.attach(Wrapped(ours))
        started = time.monotonic()
        ours.settimeout(5)  # bounds the test if the deadline never fires
        assert ours.recv(1) == b""  # shut down under us: end of stream, not a 5 s timeout
        elapsed = time.monotonic() - started
        deadline.close()
    # Ended by the deadline: not before it, and not by the 5 s socket timeout (an end of
    # stream, not a TimeoutError).
    assert deadline.fired and elapsed >= 0.25


def test_disarmed_deadline_leaves_the_socket_alone() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        deadline = SocketDeadline(0.2)
        deadline.attach(Wrapped(ours))
        deadline.close()
        time.sleep(0.4)
        peer.sendall(b"x")
        ours.settimeout(2)
        assert ours.recv(1) == b"x"
    assert not deadline.fired
