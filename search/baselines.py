"""Baselines every benchmark reports beside the searches.

- ``uniform``: the same keep ratio in every layer, the largest that meets the budget.
- ``sensitivity``: greedy keep ratios from per-layer sensitivity curves (:mod:`amc.analysis.sensitivity`).
- ``random``: EagleEye-style random search (Li et al., 2020): random per-layer ratios, scaled to use
  the budget, projected to be feasible, each evaluated with adaptive BN.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from search.problem import SearchProblem


def _largest_feasible(problem: SearchProblem, make, lo: float, hi: float, iters: int = 40) -> float:
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
    ratio = _largest_feasible(problem, lambda r: [r] * p.n_layers, p.min_keep, p.max_keep)
    return p.project([ratio] * p.n_layers)  # no-op for a feasible uniform policy; guards rounding


def random_keep(problem: SearchProblem, rng: np.random.Generator) -> list[float]:
    """A random feasible policy that uses the budget: ``clip(s * u)`` with the largest feasible scale s."""
    p = problem.projector
    u = rng.uniform(p.min_keep, p.max_keep, p.n_layers)

    def make(s: float) -> list[float]:
        return np.clip(s * u, p.min_keep, p.max_keep).tolist()

    scale = _largest_feasible(problem, make, 0.0, p.max_keep / p.min_keep)
    return p.project(make(scale))


class UniformStrategy:
    name = "uniform"

    def run(self, problem: SearchProblem, evaluations: int, *, seed: int) -> None:
        """Evaluates the uniform policy once (more evaluations would repeat it)."""
        if evaluations > 0:
            problem.evaluate_keeps([uniform_keep(problem)], steps=[problem.count])


class SensitivityStrategy:
    """Greedy keep ratios from per-layer sensitivity curves (:mod:`amc.analysis.sensitivity`), one recorded policy.

    The curves (one evaluation per layer and keep ratio, not recorded in the history: they break the
    budget) are written to ``sensitivity.csv`` and ``sensitivity.png`` in the run folder; a resumed run
    reads them back.
    """

    name = "sensitivity"

    def __init__(self, out: Path, keeps=None, *, batch_size: int = 16) -> None:
        self.out = Path(out)
        self.keeps = keeps
        self.batch_size = batch_size

    def run(self, problem: SearchProblem, evaluations: int, *, seed: int) -> None:
        from amc.analysis.sensitivity import DEFAULT_KEEPS, greedy_allocation, plot_curves, read_csv, sensitivity_curves
        from amc.analysis.sensitivity import write_csv

        if evaluations <= 0:
            return
        path = self.out / "sensitivity.csv"
        if path.exists():
            curves = read_csv(path, problem.graph)
        else:
            curves = sensitivity_curves(problem.evaluator, problem.graph, self.keeps or DEFAULT_KEEPS,
                                        batch=self.batch_size, to_policy=problem.policy,
                                        progress=False)
            write_csv(curves, path)
            plot_curves(curves, self.out / "sensitivity.png")
        keep = greedy_allocation(curves, problem.cost_model, problem.projector)
        problem.evaluate_keeps([keep], steps=[problem.count])


class RandomStrategy:
    name = "random"

    def __init__(self, batch_size: int = 1) -> None:
        self.batch_size = batch_size

    def run(self, problem: SearchProblem, evaluations: int, *, seed: int) -> None:
        # One generator per sample index, and the indices already recorded are skipped: a resumed run
        # draws exactly the samples it had not evaluated (a parallel batch may finish out of order).
        done = {r.step for r in problem.records}
        todo = [i for i in range(len(done) + evaluations) if i not in done][:evaluations]
        for first in range(0, len(todo), self.batch_size):
            steps = todo[first : first + self.batch_size]
            keeps = [random_keep(problem, np.random.default_rng([seed, i])) for i in steps]
            problem.evaluate_keeps(keeps, steps=steps)
