"""Budget projection of per-unit sparsity: every projected policy has exactly the target average sparsity.

A channel budget is an upper bound (AMC's clipping leaves a policy at or under it). A sparsity budget is an
average that every candidate should meet exactly, so that candidates differ only in where the sparsity goes
(OWL's and EvoPress's setting): :meth:`SparsityProjector.project` maps keep ratios to sparsities, takes the
nearest vector with the target size-weighted average in ``[1 - max_keep, 1 - min_keep]``
(:meth:`amc.sparsity.budget.SparsityBudget.project`: one shift, clipped) and maps back. Whole-policy
strategies (Optuna, random, uniform, the baselines and warm starts) go through it. The sequential clipping of
:class:`~envs.projection.BudgetProjector` (:meth:`~envs.projection.BudgetProjector.clip`) is inherited
unchanged for an environment, on the continuous cost (:meth:`amc.cost.sparsity_cost.SparsityCost.costs_varying`).

With N:M levels (the graph's :attr:`~amc.cost.sparsity_cost.SparsityGraph.levels`, those whose keep ratio lies in
``[min_keep, max_keep]``) :meth:`SparsityProjector.project` maps any keep ratios, an agent's continuous actions
included, to one level per unit (:meth:`amc.sparsity.budget.SparsityBudget.project_levels_exact`: the nearest
levels that remove the target exactly, where the levels can) and returns the levels' keep ratios (2:4 is 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence

from amc.cost.sparsity_cost import SparsityCost
from amc.errors import ConfigError
from amc.sparsity.budget import SparsityBudget
from envs.projection import BudgetProjector


class SparsityProjector(BudgetProjector):
    """:class:`~envs.projection.BudgetProjector` whose :meth:`project` meets the budget exactly.

    Args:
        cost_model: The :class:`~amc.cost.sparsity_cost.SparsityCost` of the model.
        budget: Fraction of the prunable weights kept (``1 - `` the average sparsity), in (0, 1].
        min_keep, max_keep: Range of each unit's keep ratio (``1 - max_sparsity``, ``1 - min_sparsity``).

    Raises:
        ConfigError, BudgetError: As :class:`~envs.projection.BudgetProjector` (a budget below ``min_keep`` is
            unreachable).
    """

    exact = True  # project() meets the budget exactly: an environment applies it to a finished episode too

    def __init__(self, cost_model: SparsityCost, budget: float, *, min_keep: float = 0.05,
                 max_keep: float = 1.0, grid: int = 1000) -> None:
        super().__init__(cost_model, budget, min_keep=min_keep, max_keep=max_keep, grid=grid)
        graph = cost_model.graph
        self.levels = tuple(v for v in graph.levels
                            if self.min_keep - 1e-12 <= v.keep / v.group <= self.max_keep + 1e-12)
        if graph.levels and not self.levels:
            raise ConfigError(f"no N:M level of {[str(v) for v in graph.levels]} keeps a fraction of weights in "
                              f"[min_keep, max_keep] = [{self.min_keep}, {self.max_keep}]: widen the range "
                              "(e.g. --min-keep 0.2 --max-keep 1.0)")
        self.sparsity = SparsityBudget(graph.layout, self.budget, min_sparsity=1.0 - self.max_keep,
                                       max_sparsity=1.0 - self.min_keep,
                                       **({"levels": self.levels} if self.levels else {}))
        if self.levels:  # refuses, now, a budget these levels cannot reach (BudgetError)
            self.sparsity.project_levels_exact([1.0 - self.min_keep] * self.n_layers)
        self._kept = cost_model.base - cost_model.removed_target(self.budget)

    def project(self, keep: Sequence[float]) -> list[float]:
        """The keep ratios nearest to ``keep`` (size-weighted L2 on the sparsities) at exactly the budget; with
        levels, the keep ratios of the nearest levels at the budget (exactly, where the levels can make it)."""
        values = list(keep)
        if len(values) != self.n_layers:
            raise ConfigError(f"expected {self.n_layers} keep ratios (one per unit), got {len(values)}")
        if self.levels:
            return [v.keep / v.group for v in self.sparsity.project_levels_exact([1.0 - float(k) for k in values])]
        sparsities = self.sparsity.project([1.0 - float(k) for k in values])
        return [min(max(1.0 - s, self.min_keep), self.max_keep) for s in sparsities]

    def feasible(self, keep: Sequence[float]) -> bool:
        """Whether ``keep`` keeps at most the weights a projected policy keeps."""
        return self.cost_model.cost(list(keep)) <= self._kept
