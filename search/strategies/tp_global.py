"""``tp-global``: Torch-Pruning's global pruning at the search's budget, as one policy.

What a user of Torch-Pruning gets instead of a search (:func:`amc.pruning.global_pruning.global_pruning`:
global magnitude pruning of channels, or Torch-Pruning's whole-head recipe for attention models), read back
as keep ratios and evaluated through the same evaluator as every other candidate. It is also a baseline
every search evaluates first (origin ``baseline:tp-global`` in ``history.csv``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from amc.errors import ConfigError
from search.history import BASELINE_PREFIX
from search.strategies.base import Strategy, register

if TYPE_CHECKING:
    from amc.context import Context
    from search.config import SearchConfig
    from search.problem import SearchProblem

log = logging.getLogger(__name__)

ORIGIN = BASELINE_PREFIX + "tp-global"  # its history.csv origin


def tp_global_keep(problem: SearchProblem, ctx: Context) -> list[float] | None:
    """Torch-Pruning's global-pruning widths at ``problem``'s budget and resource, as a feasible keep vector.

    The cost is the problem's own cost model (FLOPs, params or latency), its ``min_keep`` the problem's; the
    vector is projected with the problem's projector (a no-op unless ``max_keep`` < 1 cuts a layer that
    Torch-Pruning kept whole).

    Returns:
        The keep ratios, or None (with a warning saying why) where Torch-Pruning cannot prune the model or
        reach the budget.
    """
    from amc.pruning.global_pruning import global_pruning

    cost = problem.cost_model
    ratio_of = getattr(cost, "ratio", None) or (lambda keep: cost.cost(keep) / cost.base)
    p = problem.projector
    result = global_pruning(ctx.model, problem.graph, ctx.example(2), budget=problem.budget, ratio_of=ratio_of,
                            min_keep=p.min_keep)
    if result is None:
        return None
    keep = p.project(list(result.keep))
    if not p.feasible(keep):  # cannot happen for a vector that met the budget; guards the projection
        log.warning("Torch-Pruning's global pruning gives no baseline: its widths %s do not meet budget %g after "
                    "the projection", list(result.units), problem.budget)
        return None
    if problem.key(keep) != problem.key(list(result.keep)):
        log.info("tp-global: widths %s projected to %s (max_keep %g)", list(result.units),
                 list(problem.graph.channels(keep)), p.max_keep)
    return keep


@register
class TPGlobalStrategy(Strategy):
    """Evaluates Torch-Pruning's global-pruning policy once (more evaluations would repeat it).

    Args:
        ctx: The run's context (the base model Torch-Pruning prunes, and an example input).
    """

    name = "tp-global"
    single_policy = True
    takes_baselines = False  # it is one

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @classmethod
    def from_config(cls, config: SearchConfig, *, out: Path, batch_size: int, ctx: Context) -> TPGlobalStrategy:
        return cls(ctx)

    def run(self, problem: SearchProblem, evaluations: int, *, seed: int) -> None:
        if evaluations <= 0 or any(r.origin == ORIGIN for r in problem.records):  # resumed after its one row
            return
        keep = tp_global_keep(problem, self.ctx)
        if keep is None:
            raise ConfigError(f"--strategy tp-global: Torch-Pruning's global pruning cannot prune this model at "
                              f"budget {problem.budget:g} (the warning above says why); use --strategy uniform or "
                              "a search strategy")
        problem.evaluate_keeps([keep], steps=[problem.count], origins=[ORIGIN])


__all__ = ["ORIGIN", "TPGlobalStrategy", "tp_global_keep"]
