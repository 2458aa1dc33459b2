"""How sure one benchmark run is of its median, and the verdict that allows against a goal.

A process is a few % faster or slower than an identical one for its whole life, so the rounds of
one generation of apps share a bias: the interval resamples whole generations, not rounds. The
verdict against a goal says "not resolved" when the interval straddles it, instead of calling a
median that lies within the run's own noise of the goal met or missed.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

DRAWS = 4000


def bootstrap_interval(
    per_generation: Sequence[Sequence[float]], share: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """The central `share` of the median of every round, over resamples of whole generations
    (with replacement); seeded, so a run's printout can be reproduced from its figures."""
    if not per_generation or not all(per_generation):
        raise ValueError("every generation needs at least one round")
    rng = random.Random(seed)
    medians = sorted(
        statistics.median(
            value
            for generation in rng.choices(per_generation, k=len(per_generation))
            for value in generation
        )
        for _ in range(DRAWS)
    )
    cut = round(DRAWS * (1 - share) / 2)
    return medians[cut], medians[DRAWS - 1 - cut]


def verdict(interval: tuple[float, float], goal: float, *, at_least: bool) -> str:
    """'met', 'missed' or 'not resolved' for a goal of `>= goal` (`at_least`) or `<= goal`."""
    low, high = interval
    worst, best = (low, high) if at_least else (-high, -low)
    bound = goal if at_least else -goal
    if worst >= bound:
        return "met"
    if best < bound:
        return "missed"
    return "not resolved"


@dataclass(frozen=True, slots=True)
class Verdict:
    """One line of a run's summary: the scenario, its figure, its goal and the verdict."""

    scenario: str
    figure: str
    goal: str
    verdict: str  # met, missed or not resolved


def judge(
    scenario: str,
    per_generation: Sequence[Sequence[float]],
    goal: float,
    *,
    at_least: bool,
    digits: int,
    unit: str = "",
) -> Verdict:
    """The median of every round, its 95% interval over generations and the verdict it allows.
    In-process scenarios pass each round as a generation of its own."""
    median = statistics.median(value for generation in per_generation for value in generation)
    interval = bootstrap_interval(per_generation)
    low, high = (f"{bound:.{digits}f}" for bound in interval)
    figure = f"{median:.{digits}f}{unit} (95% {low}..{high}{unit})"
    goal_text = f"{'>=' if at_least else '<='} {goal:g}{unit}"
    return Verdict(scenario, figure, goal_text, verdict(interval, goal, at_least=at_least))


def print_verdict(result: Verdict) -> None:
    print(f"{result.scenario}: {result.figure}; goal {result.goal}: {result.verdict}")


def judge_count(
    scenario: str, ratio: float, goal: float, *, spread: float, at_least: bool = False
) -> Verdict:
    """A counted ratio (instructions, opcodes) against a goal; `spread`: how far counts of the
    same code move from run to run, so a ratio closer than that to the goal is not resolved."""
    interval = (ratio - spread, ratio + spread)
    figure = f"{ratio:.3f}x (runs move +-{spread:.3f})"
    goal_text = f"{'>=' if at_least else '<='} {goal:g}x"
    return Verdict(scenario, figure, goal_text, verdict(interval, goal, at_least=at_least))
