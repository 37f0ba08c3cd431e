"""``sensitivity``: greedy keep ratios from per-layer sensitivity curves (:mod:`amc.analysis.sensitivity`).

One recorded policy. The curves (one evaluation per layer and keep ratio, not recorded in the history:
they break the budget) are written to ``sensitivity.csv`` and ``sensitivity.png`` in the run folder; a
resumed run reads them back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from search.strategies.base import Strategy, register

if TYPE_CHECKING:
    from amc.context import Context
    from search.config import SearchConfig
    from search.problem import SearchProblem


@register
class SensitivityStrategy(Strategy):
    """Measures the curves (or reads them back), then evaluates the greedy allocation once.

    Args:
        out: The run folder (``sensitivity.csv``, ``sensitivity.png``).
        keeps: Keep ratios of the curves (None: :data:`amc.analysis.sensitivity.DEFAULT_KEEPS`).
        batch_size: Curve points evaluated together.
    """

    name = "sensitivity"
    single_policy = True  # the curves are not rows: one recorded policy
    parallel_batch = 4
    min_batch = 16

    def __init__(self, out: Path, keeps: Sequence[float] | None = None, *, batch_size: int = 16) -> None:
        self.out = Path(out)
        self.keeps = keeps
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, config: SearchConfig, *, out: Path, batch_size: int, ctx: Context) -> SensitivityStrategy:
        return cls(out, batch_size=batch_size)

    def run(self, problem: SearchProblem, evaluations: int, *, seed: int) -> None:
        from amc.analysis.sensitivity import (DEFAULT_KEEPS, greedy_allocation, plot_curves, read_csv,
                                              sensitivity_curves, write_csv)

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
