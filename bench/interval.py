"""How sure one benchmark run is of its median: a bootstrap interval over generations of apps.

A process is a few % faster or slower than an identical one for its whole life, so the rounds of
one generation of apps share a bias: the interval resamples whole generations, not rounds. The
verdict against a goal says "not resolved" when the interval straddles it, instead of calling a
median that lies within the run's own noise of the goal met or missed.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence

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
