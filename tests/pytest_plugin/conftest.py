"""A small suite of known findings, run by pytester in a subprocess against the real database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.pool import Pool

from monitor.instrumentation import pools_seen
from monitor.suite_watch import SuiteWatch
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


@pytest.fixture
def watch() -> Iterator[SuiteWatch]:
    """A watch of the test's own, installed over the one this suite runs under."""
    own = SuiteWatch()
    own.install()
    yield own
    own.uninstall()


def _count_pools(on: bool) -> None:
    """Start or stop `pools_seen`'s count, as a monitor of an app's starts it."""
    if on and not pools_seen._installed:
        event.listen(Pool, "first_connect", pools_seen._on_first_connect)
    elif not on and pools_seen._installed:
        event.remove(Pool, "first_connect", pools_seen._on_first_connect)
    pools_seen._installed = on


@pytest.fixture(params=[False, True], ids=["no app monitor yet", "an app monitor before"])
def pools_counted(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Whether a monitor of an app's has started counting the process's pools (the test runs
    both ways, the count put back as it was afterwards)."""
    was = pools_seen._installed
    _count_pools(request.param)
    yield request.param
    _count_pools(was)
