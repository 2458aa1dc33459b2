"""A slice of SQLAlchemy's own pool tests gives the same outcomes with a monitor on every pool.

The full comparison (five test files, sqlite, psycopg2 and asyncpg) is `make sqla-suite`.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import STRICT
from tests.sqlalchemy_suite.compare import differing, run_suite, suite_sources

# The pool classes whose tests caught the monitor changing behaviour: the user's record_info,
# the calls made on a mock DBAPI connection, async pools connecting from sync code.
SLICE = [
    "test/engine/test_pool.py::PoolTest",
    "test/engine/test_pool.py::PoolEventsTest",
    "test/engine/test_pool.py::ResetOnReturnTest",
]


@pytest.mark.slow
@pytest.mark.timeout(400)  # two pytest start-ups of SQLAlchemy's suite on a busy machine
def test_sqlalchemy_pool_tests_pass_alike_with_the_monitor() -> None:
    try:
        tree = suite_sources()
    except (subprocess.CalledProcessError, StopIteration) as error:
        if STRICT:
            raise
        pytest.skip(f"SQLAlchemy's test sources could not be fetched: {error}")
    bare = run_suite(tree, None, SLICE, monitored=False, label="subset")
    monitored = run_suite(tree, None, SLICE, monitored=True, label="subset")
    assert len(bare.outcomes) > 50
    assert "passed" in bare.outcomes.values()
    assert differing(bare, monitored) == []
    attached, failures = monitored.summary[:2]
    assert "pools without an engine: 0" not in attached  # the plugin did wrap the suite's pools
    assert failures == "pool-monitor listener failures: 0"
