"""Database URL hygiene: masking for display, driver normalisation, no DSN in pool logs."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.engine import URL, make_url


def mask_url(url: str | URL) -> str:
    """The URL with its password masked and its query string dropped (it may hold secrets too)."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except Exception:
        return "<unparseable database URL>"
    return parsed.set(query={}).render_as_string(hide_password=True)


def sync_psycopg2_url(url: str | URL) -> URL:
    """The same database through psycopg2, whatever driver the app uses (probe, sync tools)."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.set(drivername="postgresql+psycopg2")


def app_url(raw: str) -> URL:
    """DATABASE_URL as the demo app uses it: a bare `postgresql://` means psycopg2 (SQLAlchemy 2.1
    would pick psycopg 3, which is not a dependency)."""
    parsed = make_url(raw.replace("postgres://", "postgresql://", 1))
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed


class _HideDsn(logging.Filter):
    """psycopg2's connection repr carries its libpq parameters (`options`, `sslpassword`, ...);
    SQLAlchemy's pool DEBUG lines print it. Replace such arguments with a harmless repr."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(_carries_dsn(arg) for arg in args):
            record.args = tuple(_harmless(arg) if _carries_dsn(arg) else arg for arg in args)
        return True


_HIDE_DSN = _HideDsn()


def hide_dsn_in_pool_logs(engine: Any) -> None:
    """Install the filter on this engine's pool logger (the same logger object serves every pool
    of that name, so it survives `dispose()`)."""
    pool_logger = engine.pool.logger
    logger = getattr(pool_logger, "logger", pool_logger)  # echo_pool wraps it in an InstanceLogger
    if isinstance(logger, logging.Logger) and _HIDE_DSN not in logger.filters:
        logger.addFilter(_HIDE_DSN)


def _carries_dsn(arg: object) -> bool:
    return hasattr(arg, "dsn") or hasattr(arg, "get_dsn_parameters")


def _harmless(arg: object) -> str:
    pid = getattr(getattr(arg, "info", None), "backend_pid", None)
    return f"<{type(arg).__name__} backend_pid={pid}>"
