"""Backend pid and socket address of a DBAPI connection without a round trip (PostgreSQL drivers).

Only what the connection's class declares is read: an object that makes up attributes on
demand (a mock DBAPI in a test suite) or a driver without a pid is left untouched.
"""

from __future__ import annotations

import socket
from typing import Any


def backend_pid(dbapi_connection: Any) -> int | None:
    connection_type = type(dbapi_connection)
    if hasattr(connection_type, "info"):  # psycopg2 >= 2.8, psycopg 3
        return _pid_of_info(dbapi_connection.info)
    if hasattr(connection_type, "driver_connection"):  # SQLAlchemy's async adapters
        driver = dbapi_connection.driver_connection
        driver_type = type(driver)
        if hasattr(driver_type, "get_server_pid"):  # asyncpg
            return _pid(driver.get_server_pid())
        if hasattr(driver_type, "info"):  # psycopg 3's AsyncConnection
            return _pid_of_info(driver.info)
        return None
    if hasattr(connection_type, "get_backend_pid"):  # older psycopg2
        return _pid(dbapi_connection.get_backend_pid())
    return None


def _pid_of_info(info: Any) -> int | None:
    return _pid(getattr(info, "backend_pid", None)) if hasattr(type(info), "backend_pid") else None


def _pid(value: object) -> int | None:
    # Any non-zero int: a pooler (PgBouncer) hands out its own, possibly negative, key as the pid.
    return value if isinstance(value, int) and not isinstance(value, bool) and value != 0 else None


def socket_address(dbapi_connection: Any) -> tuple[str, int] | None:
    """The app's end (address, port) of a TCP connection's socket, without a round trip; None
    for Unix sockets. A pooler lists its clients by this address (PgBouncer's SHOW CLIENTS)."""
    connection_type = type(dbapi_connection)
    if hasattr(connection_type, "driver_connection"):  # SQLAlchemy's async adapters
        driver = dbapi_connection.driver_connection
        if not hasattr(type(driver), "_transport"):  # asyncpg
            return None
        transport = driver._transport
        return _inet(transport.get_extra_info("sockname")) if transport is not None else None
    if not hasattr(connection_type, "fileno"):  # psycopg2, psycopg 3
        return None
    sock = socket.socket(fileno=dbapi_connection.fileno())
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
