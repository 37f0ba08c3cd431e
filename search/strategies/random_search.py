"""``random``: EagleEye-style random search (Li et al., 2020).

Random per-layer keep ratios, scaled to use the budget, projected to be feasible, each evaluated with
adaptive BN (the search's score).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from search.history import SEARCH
from search.strategies.base import Strategy, register
from search.strategies.uniform import largest_feasible

if TYPE_CHECKING:
    from amc.context import Context
    from search.config import SearchConfig
    from search.problem import SearchProblem


def random_keep(problem: SearchProblem, rng: np.random.Generator) -> list[float]:
    """A random feasible policy that uses the budget: ``clip(s * u)`` with the largest feasible scale s."""
    p = problem.projector
    u = rng.uniform(p.min_keep, p.max_keep, p.n_layers)

    def make(s: float) -> list[float]:
        return np.clip(s * u, p.min_keep, p.max_keep).tolist()

    scale = largest_feasible(problem, make, 0.0, p.max_keep / p.min_keep)
    return p.project(make(scale))


@register
class RandomStrategy(Strategy):
    """Independent random samples, ``batch_size`` at a time.

    Args:
        batch_size: Samples evaluated together (a parallel pool's batch).
    """

    name = "random"
    parallel_batch = 16  # independent samples: big batches keep every worker of a pool busy

    def __init__(self, batch_size: int = 1) -> None:
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, config: SearchConfig, *, out: Path, batch_size: int, ctx: Context) -> RandomStrategy:
        return cls(batch_size=batch_size)

    def run(self, problem: SearchProblem, evaluations: int, *, seed: int) -> None:
        # One generator per sample index, and the indices already recorded are skipped: a resumed run
        # draws exactly the samples it had not evaluated (a parallel batch may finish out of order).
        done = {r.step for r in problem.records if r.origin == SEARCH}  # not the baselines and warm starts
        todo = [i for i in range(len(done) + evaluations) if i not in done][:evaluations]
        for first in range(0, len(todo), self.batch_size):
            steps = todo[first : first + self.batch_size]
            keeps = [random_keep(problem, np.random.default_rng([seed, i])) for i in steps]
            problem.evaluate_keeps(keeps, steps=steps)
