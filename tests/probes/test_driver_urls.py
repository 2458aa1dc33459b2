"""Any URL the app's engine accepts works for the probe: driver parameters translated or dropped."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from monitor.urls import probe_psycopg2_url

from .conftest import ProbeFactory

PASSWORD = "s3cret-Pw"  # trust auth ignores it; it must never be printed


@pytest.mark.parametrize(
    ("ssl", "sslmode"),
    [
        ("require", "require"),
        ("verify-full", "verify-full"),
        ("verify-ca", "verify-ca"),
        ("disable", "disable"),
        ("prefer", "prefer"),
        ("true", "require"),
        ("false", "disable"),
    ],
)
def test_asyncpg_ssl_becomes_sslmode(ssl: str, sslmode: str) -> None:
    url, dropped = probe_psycopg2_url(f"postgresql+asyncpg://u:p@db/app?ssl={ssl}")
    assert url.drivername == "postgresql+psycopg2"
    assert dict(url.query) == {"sslmode": sslmode}
    assert dropped == ()


def test_asyncpg_only_parameters_are_dropped_and_libpq_ones_kept() -> None:
    url, dropped = probe_psycopg2_url(
        "postgresql+asyncpg://u:p@db/app?ssl=require&sslrootcert=/ca.pem&sslcert=/c.pem"
        "&command_timeout=60&prepared_statement_cache_size=0&statement_cache_size=0"
    )
    assert dict(url.query) == {
        "sslmode": "require",
        "sslrootcert": "/ca.pem",
        "sslcert": "/c.pem",
    }
    assert dropped == ("command_timeout", "prepared_statement_cache_size", "statement_cache_size")
    assert url.password == "p"  # the probe still needs it to log in


def test_an_explicit_sslmode_wins_over_ssl_and_an_unknown_ssl_value_is_dropped() -> None:
    url, dropped = probe_psycopg2_url("postgresql+asyncpg://db/app?sslmode=verify-full&ssl=true")
    assert dict(url.query) == {"sslmode": "verify-full"} and dropped == ("ssl",)
    url, dropped = probe_psycopg2_url("postgresql+asyncpg://db/app?ssl=maybe")
    assert dict(url.query) == {} and dropped == ("ssl",)


def test_psycopg3_url_keeps_its_libpq_parameters() -> None:
    url, dropped = probe_psycopg2_url(
        "postgresql+psycopg://u@db/app?sslmode=prefer&connect_timeout=5&prepare_threshold=0"
        "&target_session_attrs=read-write"
    )
    assert url.drivername == "postgresql+psycopg2"
    assert dict(url.query) == {
        "sslmode": "prefer",
        "connect_timeout": "5",
        "target_session_attrs": "read-write",
    }
    assert dropped == ("prepare_threshold",)


def _with_driver(url: URL, driver: str, **query: str) -> URL:
    return url.set(drivername=driver, password=PASSWORD).update_query_dict(query)


def test_a_real_asyncpg_engine_url_with_driver_parameters_probes_fine(
    database_url: URL, make_probe: ProbeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    url = _with_driver(
        database_url,
        "postgresql+asyncpg",
        ssl="disable",
        command_timeout="60",
        prepared_statement_cache_size="0",
    )

    async def app_query() -> int:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return int((await conn.execute(text("SELECT 1"))).scalar_one())
        finally:
            await engine.dispose()

    assert asyncio.run(app_query()) == 1  # the app's engine accepts this URL
    with caplog.at_level(logging.WARNING, logger="monitor.probes.runner"):
        probe = make_probe(url)
        probe.run_once()
    snapshot = probe.health.snapshot()
    assert snapshot.up is True, snapshot.last_error
    lines = [r.getMessage() for r in caplog.records if "ignores URL parameters" in r.getMessage()]
    assert lines == [
        "the probe (psycopg2) ignores URL parameters of the app's driver: "
        "command_timeout, prepared_statement_cache_size"
    ]
    assert all(PASSWORD not in record.getMessage() for record in caplog.records)


def test_a_real_psycopg3_engine_url_probes_fine(
    database_url: URL, make_probe: ProbeFactory
) -> None:
    # psycopg 3 hands a URL's query to libpq, so its URLs carry libpq keywords only.
    url = _with_driver(
        database_url,
        "postgresql+psycopg",
        sslmode="disable",
        connect_timeout="5",
        target_session_attrs="any",
    )
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1  # the app's engine takes it
    finally:
        engine.dispose()
    probe = make_probe(url)
    probe.run_once()
    snapshot = probe.health.snapshot()
    assert snapshot.up is True, snapshot.last_error


def test_a_psycopg3_url_with_a_driver_keyword_probes_fine(
    database_url: URL, make_probe: ProbeFactory
) -> None:
    url = _with_driver(database_url, "postgresql+psycopg", sslmode="disable", prepare_threshold="0")
    probe = make_probe(make_url(url.render_as_string(hide_password=False)))
    probe.run_once()
    snapshot = probe.health.snapshot()
    assert snapshot.up is True, snapshot.last_error
