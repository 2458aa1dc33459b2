"""pg_settings: connection limits and the timeouts that end sessions, in seconds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, text

from monitor.state.server import ServerSettings

SETTING_NAMES: tuple[str, ...] = (
    "server_version",
    "server_version_num",
    "max_connections",
    "superuser_reserved_connections",
    "reserved_connections",  # PostgreSQL 16+
    "idle_in_transaction_session_timeout",
    "statement_timeout",
    "idle_session_timeout",
    "transaction_timeout",  # PostgreSQL 17+
)

# reset_val, not setting: the probe SETs its own statement_timeout and lock_timeout, and
# reset_val is the value before that (file, ALTER SYSTEM/DATABASE/ROLE), what sessions get.
# A name this server does not know is simply absent from the result.
SETTINGS_SQL = """
SELECT name, reset_val AS value, unit
FROM pg_settings
WHERE name IN ({names})
""".format(names=", ".join(f"'{name}'" for name in SETTING_NAMES))

_SECONDS_PER_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_settings(rows: Iterable[Mapping[Any, Any]]) -> ServerSettings:
    """Rows of SETTINGS_SQL to ServerSettings; raises ValueError if a required one is missing."""
    found = {str(row["name"]): (row.get("value"), row.get("unit")) for row in rows}

    def required(name: str) -> str:
        value = found.get(name, (None, None))[0]
        if value is None:
            raise ValueError(f"pg_settings has no {name}")
        return str(value)

    def count(name: str) -> int:
        value = found.get(name, (None, None))[0]
        return 0 if value is None else int(value)

    return ServerSettings(
        server_version=required("server_version"),
        server_version_num=int(required("server_version_num")),
        max_connections=int(required("max_connections")),
        superuser_reserved_connections=count("superuser_reserved_connections"),
        reserved_connections=count("reserved_connections"),
        idle_in_transaction_session_timeout_s=_timeout_s(
            found.get("idle_in_transaction_session_timeout")
        ),
        statement_timeout_s=_timeout_s(found.get("statement_timeout")),
        idle_session_timeout_s=_timeout_s(found.get("idle_session_timeout")),
        transaction_timeout_s=_timeout_s(found.get("transaction_timeout")),
    )


def fetch_settings(conn: Connection) -> ServerSettings:
    return parse_settings(conn.execute(text(SETTINGS_SQL)).mappings().all())


def _timeout_s(entry: tuple[Any, Any] | None) -> float | None:
    """A timeout in seconds from pg_settings' value and unit; None when absent or 0 (off)."""
    if entry is None or entry[0] is None:
        return None
    value, unit = entry
    amount = float(value)
    seconds_per_unit = _SECONDS_PER_UNIT.get(str(unit))
    if amount <= 0 or seconds_per_unit is None:  # 0 means off; time settings always have a unit
        return None
    return amount * seconds_per_unit
