"""Backend pid of a DBAPI connection without a round trip, across the common PostgreSQL drivers.

Only what the connection's class declares is read: an object that makes up attributes on
demand (a mock DBAPI in a test suite) or a driver without a pid is left untouched.
"""

from __future__ import annotations

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
    return value if isinstance(value, int) and value > 0 else None
