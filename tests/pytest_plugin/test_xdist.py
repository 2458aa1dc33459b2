"""The plugin under pytest-xdist: what the workers find reaches the controller's summary, its
JSON report and its exit status."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

IMPORT_TIME_HOLD = """
from conftest import engine

HELD = engine.connect()  # taken while the module is imported, never returned


def test_passes():
    pass
"""


def test_the_workers_findings_reach_the_controllers_summary_and_report(
    suite: pytest.Pytester,
) -> None:
    report = suite.path / "pool-monitor.json"
    result = suite.runpytest_subprocess(
        "-n", "2", "--pool-monitor=report", f"--pool-monitor-report={report}", "test_suite.py"
    )

    result.assert_outcomes(passed=4)
    findings = json.loads(report.read_text())["findings"]
    assert sorted((f["owner"]["name"], f["kind"]) for f in findings) == [
        ("test_suite.py::test_gc_reclaimed", "gc_reclaimed"),
        ("test_suite.py::test_leaks", "held_after_test"),
        ("tx_connection", "idle_in_transaction"),
    ]
    result.stdout.fnmatch_lines(
        ["*= pool-monitor =*", "1 held_after_test, 1 idle_in_transaction, 1 gc_reclaimed"]
    )


def test_a_workers_session_level_finding_fails_the_run(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_import_hold=IMPORT_TIME_HOLD)
    report = suite.path / "pool-monitor.json"
    result = suite.runpytest_subprocess(
        "-n", "1", "--pool-monitor=fail", f"--pool-monitor-report={report}", "test_import_hold.py"
    )

    # No test failed: only the plugin's verdict on the whole run says so.
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    findings = json.loads(report.read_text())["findings"]
    assert [(f["owner"]["name"], f["kind"]) for f in findings] == [
        ("import and collection", "held_after_session")
    ]
