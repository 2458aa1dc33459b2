"""The plugin on a suite with one leaking test, one garbage-collected session, one fixture idle in
transaction and one clean test: exactly those findings, in each mode."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def findings_of(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, list[dict]]:
    report = pytester.path / "pool-monitor.json"
    result = pytester.runpytest_subprocess(*args, f"--pool-monitor-report={report}")
    return result, json.loads(report.read_text())["findings"]


def by_owner(findings: list[dict]) -> dict[str, list[str]]:
    owners: dict[str, list[str]] = {}
    for finding in findings:
        owners.setdefault(finding["owner"]["name"], []).append(finding["kind"])
    return owners


def test_report_mode_lists_each_finding_once_and_passes(suite: pytest.Pytester) -> None:
    result, findings = findings_of(suite, "--pool-monitor=report")

    result.assert_outcomes(passed=4)
    assert by_owner(findings) == {
        "test_suite.py::test_leaks": ["held_after_test"],
        "test_suite.py::test_gc_reclaimed": ["gc_reclaimed"],
        "tx_connection": ["idle_in_transaction"],
    }
    leak = next(f for f in findings if f["kind"] == "held_after_test")
    assert leak["leak_class"] == "idle_in_transaction"
    assert leak["site"][0].split(" in ")[0].endswith("test_suite.py:11")  # session.execute
    fixture = next(f for f in findings if f["owner"]["name"] == "tx_connection")
    assert fixture["owner"]["scope"] == "session"
    assert "test_suite.py::test_uses_transaction" in fixture["detail"]
    result.stdout.fnmatch_lines(
        [
            "*= pool-monitor =*",
            "1 held_after_test, 1 idle_in_transaction, 1 gc_reclaimed",
            "*1 x held_after_test at *test_suite.py:11 in test_leaks",
            "*from test test_suite.py::test_leaks",
        ]
    )


def test_warn_mode_warns_per_finding_and_passes(suite: pytest.Pytester) -> None:
    result, findings = findings_of(suite, "--pool-monitor=warn")

    result.assert_outcomes(passed=4, warnings=3)
    assert len(findings) == 3
    result.stdout.fnmatch_lines(["*PoolMonitorWarning: [[]held_after_test[]]*"])


def test_fail_mode_fails_the_tests_and_errors_the_fixture(suite: pytest.Pytester) -> None:
    result, findings = findings_of(suite, "--pool-monitor=fail")

    # test_clean passes; the session fixture's finding is an error at its teardown.
    result.assert_outcomes(passed=2, failed=2, errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_clean _*",
            "pool-monitor: fixture 'tx_connection' (session scope) left connections behind",
            "[[]idle_in_transaction[]] connection held idle in transaction across tests*",
            "    taken at *conftest.py:12 in tx_connection",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "FAILED test_suite.py::test_leaks - Failed: pool-monitor: test test_suite.py::*",
            "FAILED test_suite.py::test_gc_reclaimed - Failed: pool-monitor: *",
            "ERROR test_suite.py::test_clean - Failed: pool-monitor: fixture 'tx_connectio*",
        ]
    )
    assert len(findings) == 3


def test_the_allow_marker_keeps_a_known_hold_from_failing(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_allowed="""
        import pytest
        from sqlalchemy import text
        from conftest import engine

        KEPT = []

        @pytest.mark.pool_monitor_allow(reason="kept for the next test on purpose")
        def test_keeps_a_connection():
            conn = engine.connect()
            conn.execute(text("SELECT 1"))
            KEPT.append(conn)
        """
    )
    result, findings = findings_of(suite, "--pool-monitor=fail", "test_allowed.py")

    result.assert_outcomes(passed=1)
    assert [f["allowed"] for f in findings] == ["kept for the next test on purpose"]
    result.stdout.fnmatch_lines(["*(1 allowed by marker or setting)*"])


def test_ini_setting_turns_it_on_and_off_is_silent(suite: pytest.Pytester) -> None:
    suite.makeini("[pytest]\npool_monitor = fail\n")
    result = suite.runpytest_subprocess("test_suite.py::test_gc_reclaimed")
    result.assert_outcomes(failed=1)

    suite.makeini("[pytest]\npool_monitor = false\n")
    result = suite.runpytest_subprocess("test_suite.py::test_gc_reclaimed")
    result.assert_outcomes(passed=1)
    assert "= pool-monitor =" not in result.stdout.str()
