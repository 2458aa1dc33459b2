"""Rule verdicts over a window: failing while the condition held within it, OK again by itself."""

from __future__ import annotations

import pytest

from monitor.state.verdicts import RuleVerdict, VerdictWindow

RULE = "Always close sessions"


def test_a_condition_that_held_keeps_failing_for_the_window_then_clears() -> None:
    now = [1000.0]
    window = VerdictWindow(60.0, clock=lambda: now[0])
    (verdict,) = window.apply([RuleVerdict(RULE, "fail", "1 leak now")])
    assert (verdict.status, verdict.since, verdict.holds_now) == ("fail", 1000.0, True)

    now[0] = 1030.0  # the condition is gone, but it held 30 s ago
    (verdict,) = window.apply([RuleVerdict(RULE, "ok", "no leak")])
    assert (verdict.status, verdict.why, verdict.holds_now) == ("fail", "1 leak now", False)
    assert (verdict.since, verdict.last_held_at) == (1000.0, 1000.0)

    now[0] = 1060.5  # a whole window without it
    (verdict,) = window.apply([RuleVerdict(RULE, "ok", "no leak")])
    assert (verdict.status, verdict.since) == ("ok", None)


def test_an_event_between_two_looks_counts_from_its_own_time() -> None:
    now = [1000.0]
    window = VerdictWindow(60.0, clock=lambda: now[0])
    event = RuleVerdict(RULE, "fail", "1 GC reclaim", since=970.0, last_held_at=980.0)
    (verdict,) = window.apply([event])
    assert (verdict.status, verdict.since, verdict.last_held_at) == ("fail", 970.0, 980.0)
    assert verdict.holds_now is False
    now[0] = 1040.5  # 60.5 s after the event: cleared, although looked at only 40 s later
    assert window.apply([RuleVerdict(RULE, "ok", "none")])[0].status == "ok"
    # Evidence older than the window never fails a rule.
    stale = RuleVerdict(RULE, "fail", "old", since=900.0, last_held_at=901.0)
    assert window.apply([stale])[0].status == "ok"


def test_a_warning_within_a_failure_keeps_the_worst_and_the_first_start() -> None:
    now = [0.0]
    window = VerdictWindow(100.0, clock=lambda: now[0])
    window.apply([RuleVerdict(RULE, "fail", "bad")])
    now[0] = 50.0
    (verdict,) = window.apply([RuleVerdict(RULE, "warn", "meh")])
    assert (verdict.status, verdict.why, verdict.since) == ("fail", "bad", 0.0)
    now[0] = 120.0  # the failure left the window, the warning did not
    (verdict,) = window.apply([RuleVerdict(RULE, "ok", "fine")])
    assert (verdict.status, verdict.why, verdict.since) == ("warn", "meh", 0.0)
    now[0] = 200.0  # quiet for a window: a later failure starts a new episode
    window.apply([RuleVerdict(RULE, "ok", "fine")])
    now[0] = 210.0
    assert window.apply([RuleVerdict(RULE, "fail", "again")])[0].since == 210.0


def test_rules_are_independent_and_the_window_must_be_positive() -> None:
    window = VerdictWindow(10.0, clock=lambda: 5.0)
    verdicts = window.apply([RuleVerdict("a", "fail", "x"), RuleVerdict("b", "ok", "y")])
    assert [v.status for v in verdicts] == ["fail", "ok"]
    with pytest.raises(ValueError):
        VerdictWindow(0)
