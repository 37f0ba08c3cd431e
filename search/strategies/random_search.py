"""``random``: EagleEye-style random search (Li et al., 2020).

Random per-layer keep ratios, scaled to use the budget, projected to be feasible, each evaluated with
adaptive BN (the search's score). With ``--depth`` each sample first drops every removable block with
probability ``q`` (``q`` drawn per sample, uniform in [0, 1/2]: samples range from no drop to many), then
draws the widths of what is left the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from search.history import SEARCH
from search.strategies.base import Strategy, register
from amc.pruning.depth import DepthKeep, outermost
from search.strategies.uniform import largest_feasible

if TYPE_CHECKING:
    from amc.context import Context
    from search.config import SearchConfig
    from search.problem import SearchProblem


def random_drops(problem: SearchProblem, rng: np.random.Generator) -> list[str]:
    """The blocks a random sample drops (``--depth``; none without): each with one probability drawn per sample."""
    if not problem.blocks:
        return []
    rate = rng.uniform(0.0, 0.5)
    chosen = [b.name for b in problem.blocks if rng.uniform() < rate]
    return [b.name for b in outermost(problem.blocks, chosen)]


def random_keep(problem: SearchProblem, rng: np.random.Generator) -> list[float]:
    """A random feasible policy that uses the budget: ``clip(s * u)`` with the largest feasible scale s (with
    ``--depth``: after :func:`random_drops`, a :class:`~amc.pruning.depth.DepthKeep` naming them)."""
    p = problem.projector
    dropped = random_drops(problem, rng)
    u = rng.uniform(p.min_keep, p.max_keep, p.n_layers)

    def make(s: float) -> list[float]:
        keep = np.clip(s * u, p.min_keep, p.max_keep).tolist()
        return DepthKeep(keep, dropped) if dropped else keep  # type: ignore[return-value]

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
