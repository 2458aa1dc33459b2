"""A small suite of known findings, run by pytester in a subprocess against the real database."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import URL

from tests.conftest import url_string

SUITE_CONFTEST = """
import os

import pytest
from sqlalchemy import create_engine, text

# Made while pytest imports this file: the plugin must watch it too.
engine = create_engine(os.environ["PM_SUITE_URL"], pool_size=5, max_overflow=0, pool_timeout=2)


@pytest.fixture(scope="session")
def tx_connection():
    conn = engine.connect()
    conn.begin()
    conn.execute(text("SELECT 1"))
    yield conn
    conn.rollback()
    conn.close()
"""

SUITE_TESTS = """
from sqlalchemy import text
from sqlalchemy.orm import Session

from conftest import engine

KEPT = []


def test_leaks():
    session = Session(engine)
    session.execute(text("SELECT 1"))
    KEPT.append(session)


def test_gc_reclaimed():
    session = Session(engine)
    session.execute(text("SELECT 1"))


def test_uses_transaction(tx_connection):
    tx_connection.execute(text("SELECT 1"))


def test_clean():
    with Session(engine) as session:
        session.execute(text("SELECT 1"))
"""


@pytest.fixture
def suite(
    pytester: pytest.Pytester, database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    """The four-test suite in a temporary directory, pointed at the database under test."""
    pytester.makeconftest(SUITE_CONFTEST)
    pytester.makepyfile(test_suite=SUITE_TESTS)
    monkeypatch.setenv("PM_SUITE_URL", url_string(database_url))
    return pytester
