"""pg_settings probe: parsing with units and versions, values read from real servers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from monitor.probes.settings import fetch_settings, parse_settings

from .conftest import ProbeFactory


def row(name: str, value: str | None, unit: str | None = None) -> dict[str, str | None]:
    return {"name": name, "value": value, "unit": unit}


PG15_ROWS = [
    row("server_version", "15.20 (Debian 15.20-0+deb12u1)"),
    row("server_version_num", "150020"),
    row("max_connections", "100"),
    row("superuser_reserved_connections", "3"),
    row("idle_in_transaction_session_timeout", "60000", "ms"),
    row("statement_timeout", "0", "ms"),
    row("idle_session_timeout", "0", "ms"),
]


def test_parse_pg15_rows_without_newer_settings() -> None:
    settings = parse_settings(PG15_ROWS)
    assert settings.server_version.startswith("15.20")
    assert settings.server_version_num == 150020
    assert settings.max_connections == 100
    assert settings.superuser_reserved_connections == 3
    assert settings.reserved_connections == 0  # absent before PostgreSQL 16
    assert settings.idle_in_transaction_session_timeout_s == 60.0
    assert settings.statement_timeout_s is None  # 0 means off
    assert settings.idle_session_timeout_s is None
    assert settings.transaction_timeout_s is None  # absent before PostgreSQL 17


def test_parse_pg17_rows_converts_units() -> None:
    settings = parse_settings(
        [
            row("server_version", "17.2"),
            row("server_version_num", "170002"),
            row("max_connections", "200"),
            row("superuser_reserved_connections", "3"),
            row("reserved_connections", "2"),
            row("idle_in_transaction_session_timeout", "1500", "ms"),
            row("statement_timeout", "30", "s"),
            row("idle_session_timeout", "2", "min"),
            row("transaction_timeout", "1", "h"),
        ]
    )
    assert settings.reserved_connections == 2
    assert settings.idle_in_transaction_session_timeout_s == 1.5
    assert settings.statement_timeout_s == 30.0
    assert settings.idle_session_timeout_s == 120.0
    assert settings.transaction_timeout_s == 3600.0
    assert settings.available_connections == 195


def test_parse_rejects_missing_required_settings() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        parse_settings([r for r in PG15_ROWS if r["name"] != "max_connections"])


def test_parse_ignores_unknown_units_rather_than_guessing() -> None:
    settings = parse_settings([*PG15_ROWS[:4], row("statement_timeout", "5", "fortnight")])
    assert settings.statement_timeout_s is None


def test_settings_of_a_real_server(any_database_url: URL) -> None:
    engine = create_engine(any_database_url)
    try:
        with engine.connect() as conn:
            settings = fetch_settings(conn)
            version_num = int(conn.execute(text("SHOW server_version_num")).scalar_one())
            max_connections = int(conn.execute(text("SHOW max_connections")).scalar_one())
    finally:
        engine.dispose()
    assert settings.server_version_num == version_num
    assert settings.max_connections == max_connections
    assert settings.server_version.split(".")[0] == str(version_num // 10000)
    if version_num < 160000:
        assert settings.reserved_connections == 0
    if version_num < 170000:
        assert settings.transaction_timeout_s is None


@pytest.fixture
def configured_database(any_database_url: URL) -> Iterator[tuple[URL, int]]:
    """A throwaway database whose session timeouts are set with ALTER DATABASE."""
    name = f"pm_settings_{uuid.uuid4().hex[:8]}"
    admin = create_engine(any_database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        version_num = int(conn.execute(text("SHOW server_version_num")).scalar_one())
        conn.execute(text(f'CREATE DATABASE "{name}"'))
        conn.execute(text(f"ALTER DATABASE \"{name}\" SET statement_timeout = '45s'"))
        conn.execute(
            text(f"ALTER DATABASE \"{name}\" SET idle_in_transaction_session_timeout = '90s'")
        )
        conn.execute(text(f"ALTER DATABASE \"{name}\" SET idle_session_timeout = '10min'"))
        if version_num >= 170000:
            conn.execute(text(f"ALTER DATABASE \"{name}\" SET transaction_timeout = '1h'"))
    try:
        yield any_database_url.set(database=name), version_num
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_probe_reports_the_server_timeouts_not_its_own(
    configured_database: tuple[URL, int], make_probe: ProbeFactory
) -> None:
    url, version_num = configured_database
    probe = make_probe(url, timeout_s=2.0)
    probe.run_once()
    snapshot = probe.health.snapshot()
    assert snapshot.up is True, snapshot.last_error
    assert snapshot.last_sample is not None
    settings = snapshot.last_sample.settings
    # The probe's transaction runs with statement_timeout = 500 ms; sessions of the app get 45 s.
    assert settings.statement_timeout_s == 45.0
    assert settings.idle_in_transaction_session_timeout_s == 90.0
    assert settings.idle_session_timeout_s == 600.0
    if version_num >= 170000:
        assert settings.transaction_timeout_s == 3600.0
    else:
        assert settings.transaction_timeout_s is None
    with probe.engine.connect() as conn:  # its 500 ms ended with its transaction
        assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "45s"
