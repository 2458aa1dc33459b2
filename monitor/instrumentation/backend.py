"""Backend pid of a DBAPI connection without a round trip, across the common PostgreSQL drivers."""

from __future__ import annotations

import socket
from typing import Any


def backend_pid(dbapi_connection: Any) -> int | None:
    info = getattr(dbapi_connection, "info", None)  # psycopg2 >= 2.8, psycopg 3
    pid = getattr(info, "backend_pid", None)
    if isinstance(pid, int) and pid > 0:
        return pid
    driver = getattr(dbapi_connection, "driver_connection", None)  # SQLAlchemy's asyncpg adapter
    get_pid = getattr(driver, "get_server_pid", None)
    if callable(get_pid):
        value = get_pid()
        return value if isinstance(value, int) else None
    get_backend_pid = getattr(dbapi_connection, "get_backend_pid", None)  # older psycopg2
    if callable(get_backend_pid):
        value = get_backend_pid()
        return value if isinstance(value, int) else None
    return None


def socket_address(dbapi_connection: Any) -> tuple[str, int] | None:
    """The app's end (address, port) of a TCP connection's socket, without a round trip; None
    for Unix sockets. A pooler lists its clients by this address (PgBouncer's SHOW CLIENTS)."""
    driver = getattr(dbapi_connection, "driver_connection", None)  # SQLAlchemy's asyncpg adapter
    transport = getattr(driver, "_transport", None)
    if transport is not None:
        return _inet(transport.get_extra_info("sockname"))
    fileno = getattr(dbapi_connection, "fileno", None)  # psycopg2, psycopg 3
    if not callable(fileno):
        return None
    sock = socket.socket(fileno=fileno())
    try:
        return (
            _inet(sock.getsockname()) if sock.family in (socket.AF_INET, socket.AF_INET6) else None
        )
    finally:
        sock.detach()  # the descriptor stays the driver's


def _inet(address: Any) -> tuple[str, int] | None:
    if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[1], int):
        return str(address[0]), address[1]
    return None
