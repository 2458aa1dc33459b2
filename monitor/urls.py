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


# libpq's connection keywords (PostgreSQL 17): what psycopg2 takes from a URL's query string.
LIBPQ_PARAMETERS = frozenset(
    {
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "require_auth",
        "channel_binding",
        "connect_timeout",
        "client_encoding",
        "options",
        "application_name",
        "fallback_application_name",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "replication",
        "gssencmode",
        "sslmode",
        "sslnegotiation",
        "requiressl",
        "sslcompression",
        "sslcert",
        "sslkey",
        "sslcertmode",
        "sslpassword",
        "sslrootcert",
        "sslcrl",
        "sslcrldir",
        "sslsni",
        "requirepeer",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "krbsrvname",
        "gsslib",
        "gssdelegation",
        "service",
        "target_session_attrs",
        "load_balance_hosts",
    }
)
# asyncpg's `ssl` takes libpq's sslmode names, or a boolean (an encrypted connection).
_ASYNCPG_SSL = {"true": "require", "1": "require", "on": "require", "false": "disable",
                "0": "disable", "off": "disable"}  # fmt: skip
_SSLMODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})


def probe_psycopg2_url(url: str | URL) -> tuple[URL, tuple[str, ...]]:
    """The app's URL for the probe's psycopg2: driver-specific query parameters translated to
    libpq's (asyncpg `ssl` to `sslmode`), the others dropped; returns the names dropped."""
    parsed = sync_psycopg2_url(url)
    kept: dict[str, str | tuple[str, ...]] = {}
    dropped: list[str] = []
    for name, value in parsed.query.items():
        if name in LIBPQ_PARAMETERS:
            kept[name] = value
        elif name == "ssl" and "sslmode" not in parsed.query:
            mode = _asyncpg_sslmode(value)
            if mode is None:
                dropped.append(name)
            else:
                kept["sslmode"] = mode
        else:
            dropped.append(name)
    return parsed.set(query=kept), tuple(sorted(dropped))


def _asyncpg_sslmode(value: str | tuple[str, ...]) -> str | None:
    text = (value[-1] if isinstance(value, tuple) and value else value) or ""
    lowered = str(text).strip().lower()
    if lowered in _SSLMODES:
        return lowered
    return _ASYNCPG_SSL.get(lowered)


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
