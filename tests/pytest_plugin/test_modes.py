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


KINDS_TESTS = """
import gc

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from conftest import engine

KEPT = []


def drop_a_session():
    session = Session(engine)
    session.execute(text("SELECT 1"))
    del session
    gc.collect()


@pytest.mark.pool_monitor_allow(reason="drops one on purpose", kinds="gc_reclaimed")
def test_allowed_kind():
    drop_a_session()


@pytest.mark.pool_monitor_allow(reason="drops one on purpose", kinds=["gc_reclaimed"])
def test_other_kind_still_fails():
    drop_a_session()
    conn = engine.connect()
    KEPT.append(conn)


@pytest.mark.pool_monitor_allow(reason="typo", kinds="gc_reclamed")
def test_unknown_kind():
    pass
"""


def test_the_allow_marker_can_name_the_kinds_it_allows(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_kinds=KINDS_TESTS)
    result, findings = findings_of(suite, "--pool-monitor=fail", "test_kinds.py")

    result.assert_outcomes(passed=1, failed=1, errors=1)
    assert sorted(
        (f["owner"]["name"].split("::")[1], f["kind"], f["allowed"]) for f in findings
    ) == [
        ("test_allowed_kind", "gc_reclaimed", "drops one on purpose"),
        ("test_other_kind_still_fails", "gc_reclaimed", "drops one on purpose"),
        ("test_other_kind_still_fails", "held_after_test", None),
    ]
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at setup of test_unknown_kind _*",
            "pool_monitor_allow: unknown kind(s) gc_reclamed; expected some of held_after_test, *",
            "*_ test_other_kind_still_fails _*",
            "pool-monitor: test test_kinds.py::test_other_kind_still_fails left connections behind",
            "[[]held_after_test[]] connection still checked out when the test ended*",
        ]
    )
    assert "During handling of the above exception" not in result.stdout.str()


FAILING_TESTS = """
from sqlalchemy import text

from conftest import engine

KEPT = []


def test_fails_while_holding():
    conn = engine.connect()
    conn.execute(text("SELECT 1"))
    KEPT.append(conn)
    assert 1 + 1 == 3, "the test's own failure"
"""


def test_a_failing_test_keeps_its_own_error_and_shows_the_finding_beside_it(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(test_failing=FAILING_TESTS)
    result, findings = findings_of(suite, "--pool-monitor=fail", "test_failing.py")

    result.assert_outcomes(failed=1)
    assert [f["kind"] for f in findings] == ["held_after_test"]
    output = result.stdout.str()
    assert "During handling of the above exception" not in output
    result.stdout.fnmatch_lines(
        [
            "E * AssertionError: the test's own failure",
            "*- Captured pool-monitor call -*",
            "[[]held_after_test[]] connection still checked out when the test ended*",
            "FAILED test_failing.py::test_fails_while_holding - AssertionError*",
        ]
    )
