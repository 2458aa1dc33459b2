"""Shared fixtures: a real PostgreSQL for every test (DATABASE_URL, else the embedded server)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from monitor.app import create_app
from monitor.embedded import EmbeddedPostgres
from monitor.settings import Settings
from tests.pgbouncer import PgBouncer

pytest_plugins = ["pytester"]  # tests/pytest_plugin runs small suites of its own

STRICT = os.environ.get("MONITOR_TEST_STRICT") == "1"


def require_tool(name: str) -> str:
    """Path of an executable; skip without it locally, fail in CI (MONITOR_TEST_STRICT=1)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed"
        if STRICT:
            pytest.fail(message + " (MONITOR_TEST_STRICT=1)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def embedded_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """An embedded PostgreSQL 18 of this test session, in a temporary data directory."""
    # A short path keeps the Unix socket path under the 107-byte limit.
    data_dir = Path("/tmp") / f"pm-pg-{uuid.uuid4().hex[:8]}"
    server = EmbeddedPostgres(data_dir)
    server.start()
    yield server
    server.close()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(request: pytest.FixtureRequest) -> Iterator[URL]:
    """The server under test: DATABASE_URL when set (CI: local PostgreSQL 15), else embedded.

    Under pytest-xdist each worker gets a database of its own on the configured server
    (`<database>_<worker>`, dropped at the end), so no test sees another worker's sessions."""
    raw = os.environ.get("DATABASE_URL")
    if not raw:
        server: EmbeddedPostgres = request.getfixturevalue("embedded_pg")
        yield server.url()
        return
    configured = make_url(raw).set(drivername="postgresql+psycopg2")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        yield configured
        return
    name = f"{configured.database}_{worker}"
    admin = create_engine(configured, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        # A run killed before its teardown leaves the database behind: start afresh.
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield configured.set(database=name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["configured", "embedded"])
def any_database_url(request: pytest.FixtureRequest) -> URL:
    """Runs a test on both servers: the configured one (PG 15 in CI) and the embedded PG 18."""
    if request.param == "embedded":
        server: EmbeddedPostgres = request.getfixturevalue("embedded_pg")
        return server.url()
    url: URL = request.getfixturevalue("database_url")
    return url


@pytest.fixture
def schema_url(database_url: URL) -> Iterator[URL]:
    """A fresh schema for one test, reached through `search_path`; dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = database_url.update_query_dict({"options": f"-csearch_path={schema}"})
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


def python_in_fresh_process(code: str) -> None:
    """Run `code` in a new interpreter (nothing imported yet); its assertions fail the test."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def url_string(url: URL) -> str:
    return url.render_as_string(hide_password=False)


@pytest.fixture
def app_settings(schema_url: URL) -> Settings:
    """Settings for an app on its own schema; the probe and leak check run fast in tests."""
    return Settings(
        database_url=url_string(schema_url),
        probe_interval_s=0.5,
        leak_threshold_s=1.0,
        slow_query_s=0.2,
        pool_size=3,
        max_overflow=2,
        pool_timeout_s=1.0,
    )


@pytest.fixture
def client(app_settings: Settings) -> Iterator[TestClient]:
    """A running app (lifespan entered); every test leaves the pool with nothing checked out."""
    app = create_app(app_settings)
    with TestClient(app) as test_client:
        yield test_client
        assert app.state.engine.pool.checkedout() == 0, "a connection was left checked out"


def _pgbouncer(
    request: pytest.FixtureRequest, pool_mode: str, default_pool_size: int
) -> Iterator[PgBouncer]:
    executable = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if executable is None:
        require_tool("pgbouncer")
    upstream: URL = request.getfixturevalue("database_url")
    bouncer = PgBouncer(
        upstream,
        pool_mode=pool_mode,
        executable=str(executable),
        default_pool_size=default_pool_size,
    )
    yield bouncer
    bouncer.close()


@pytest.fixture(scope="session")
def pgbouncer_transaction(request: pytest.FixtureRequest) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode with ONE server connection per pool: every client that runs
    a transaction through it shares the server session the one before it used."""
    yield from _pgbouncer(request, "transaction", default_pool_size=1)


@pytest.fixture(scope="session")
def pgbouncer_session(request: pytest.FixtureRequest) -> Iterator[PgBouncer]:
    """PgBouncer in session mode: a client keeps its server connection until it disconnects."""
    yield from _pgbouncer(request, "session", default_pool_size=8)
