"""Backend pid of a DBAPI connection without a round trip, across the common PostgreSQL drivers."""

from __future__ import annotations

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
