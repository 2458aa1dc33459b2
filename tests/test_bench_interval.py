"""The bootstrap interval and verdicts every `python -m bench` scenario prints."""

from __future__ import annotations

import statistics

import pytest

from bench.interval import bootstrap_interval, verdict


def test_identical_generations_give_an_interval_of_one_point() -> None:
    assert bootstrap_interval([[0.98, 0.98], [0.98, 0.98], [0.98]]) == (0.98, 0.98)


def test_the_interval_holds_the_median_and_widens_with_the_spread_between_generations() -> None:
    tight = [[0.97, 0.98, 0.99], [0.975, 0.98, 0.985], [0.97, 0.98, 0.99]]
    # Same rounds within each generation, but one generation's process ran 6% slower.
    biased = [[0.97, 0.98, 0.99], [0.915, 0.92, 0.925], [0.97, 0.98, 0.99]]
    for per_generation in (tight, biased):
        low, high = bootstrap_interval(per_generation)
        assert low <= statistics.median(v for g in per_generation for v in g) <= high
    tight_low, tight_high = bootstrap_interval(tight)
    biased_low, biased_high = bootstrap_interval(biased)
    assert biased_high - biased_low > tight_high - tight_low
    assert biased_low <= 0.925  # resampling the slow generation twice pulls the median down


def test_the_interval_is_reproducible_from_the_figures() -> None:
    per_generation = [[0.95, 0.99], [0.97, 1.01], [0.96, 0.98], [0.93, 1.0]]
    assert bootstrap_interval(per_generation) == bootstrap_interval(per_generation)


@pytest.mark.parametrize("per_generation", [[], [[0.97], []]])
def test_a_generation_without_rounds_is_refused(per_generation: list[list[float]]) -> None:
    with pytest.raises(ValueError, match="at least one round"):
        bootstrap_interval(per_generation)


@pytest.mark.parametrize(
    ("interval", "expected"),
    [((0.972, 0.985), "met"), ((0.97, 0.97), "met"), ((0.955, 0.968), "missed"),
     ((0.962, 0.978), "not resolved")],
)  # fmt: skip
def test_verdict_for_a_goal_to_reach(interval: tuple[float, float], expected: str) -> None:
    assert verdict(interval, 0.97, at_least=True) == expected


@pytest.mark.parametrize(
    ("interval", "expected"),
    [((-0.2, 0.6), "met"), ((1.0, 1.0), "met"), ((1.1, 2.3), "missed"), ((0.4, 1.6), "not resolved")],
)  # fmt: skip
def test_verdict_for_a_goal_to_stay_under(interval: tuple[float, float], expected: str) -> None:
    assert verdict(interval, 1.0, at_least=False) == expected
