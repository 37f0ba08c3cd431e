"""``uniform``: the same keep ratio in every layer, the largest that meets the budget.

The baseline every benchmark reports beside the searches (and :mod:`search.outputs` measures beside
every run's best policy).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from search.strategies.base import Strategy, register

if TYPE_CHECKING:
    from amc.context import Context
    from search.config import SearchConfig
    from search.problem import SearchProblem


def largest_feasible(problem: SearchProblem, make: Callable[[float], list[float]], lo: float, hi: float,
                     iters: int = 40) -> float:
    """Largest x in [lo, hi] with ``make(x)`` feasible (``make`` monotone in x); lo must be feasible."""
    if problem.projector.feasible(make(hi)):
        return hi
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if problem.projector.feasible(make(mid)) else (lo, mid)
    return lo


def uniform_keep(problem: SearchProblem) -> list[float]:
    """The largest uniform keep ratio in [min_keep, max_keep] that meets the budget."""
    p = problem.projector
    ratio = largest_feasible(problem, lambda r: [r] * p.n_layers, p.min_keep, p.max_keep)
    return p.project([ratio] * p.n_layers)  # no-op for a feasible uniform policy; guards rounding


@register
class UniformStrategy(Strategy):
    """Evaluates the uniform policy once (more evaluations would repeat it)."""

    name = "uniform"
    single_policy = True
    takes_baselines = False  # it is one


    @classmethod
    def from_config(cls, config: SearchConfig, *, out: Path, batch_size: int, ctx: Context) -> UniformStrategy:
        return cls()

    def run(self, problem: SearchProblem, evaluations: int, *, seed: int) -> None:
        if evaluations > 0 and not any(r.origin == "baseline:uniform" for r in problem.records):  # resumed: done
            problem.evaluate_keeps([uniform_keep(problem)], steps=[problem.count], origins=["baseline:uniform"])
