"""The baselines of a sparsity search on a language model: uniform sparsity and OWL's layer ratios.

What a user would otherwise pick (issue 36): the same sparsity in every unit, and OWL's outlier-weighted
sparsities (Yin et al., 2024, "Outlier Weighed Layerwise Sparsity", its published M = 5 and lambda = 0.08:
:mod:`amc.sparsity.owl`). Both are projected onto the run's exact average (the problem's projector), recorded
with the origins ``baseline:uniform`` and ``baseline:owl`` and evaluated before a strategy's own proposals, as
:mod:`search.starts` does for an image model's uniform and Torch-Pruning baselines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from search.history import BASELINE_PREFIX, Start
from search.strategies.uniform import uniform_keep

if TYPE_CHECKING:
    from amc.lm_context import LMContext
    from search.problem import SearchProblem

UNIFORM = BASELINE_PREFIX + "uniform"  # the same origin as search.starts.UNIFORM
OWL = BASELINE_PREFIX + "owl"


def lm_baseline_starts(problem: SearchProblem, ctx: LMContext) -> list[Start]:
    """Uniform sparsity and OWL's sparsities at the problem's budget, both exactly at its average."""
    p = problem.projector
    owl = ctx.owl_keep(problem.budget, min_keep=p.min_keep, max_keep=p.max_keep)
    return [Start(UNIFORM, tuple(uniform_keep(problem))), Start(OWL, tuple(p.project(owl)))]


__all__ = ["OWL", "UNIFORM", "lm_baseline_starts"]
