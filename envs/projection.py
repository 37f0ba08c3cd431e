"""Budget projection: AMC's resource-constrained action clipping, for one layer or a whole policy.

Before layer ``t`` gets keep ratio ``a_t``, ``a_t`` is lowered (if needed) to the largest value for which
the budget is still reachable when every later layer is cut to ``min_keep`` (AMC's ``_action_wall``).
Because the first layer starts from a reachable state and every step keeps it reachable, every
projected policy meets the budget. The environment clips one step at a time; non-sequential strategies
(Optuna, random search) call :meth:`BudgetProjector.project` on a whole policy, which runs the very
same clipping in layer order.

With ``--depth`` (a :class:`~amc.pruning.depth.DepthCost`) a policy also drops blocks: it is projected with
:meth:`BudgetProjector.for_dropped`, the same clipping on the cost of the model with those blocks gone.
A dropped block only lowers the cost, so a reachable state stays reachable whatever is dropped next.

A budget that widths alone cannot reach (every layer at ``min_keep``) but dropping blocks can is accepted
with depth (:attr:`BudgetProjector.widths_reach` False): :meth:`BudgetProjector.project` then drops more blocks
(those that save the most first) until the budget is reachable, and a sequential episode clips its widths as
if the blocks still ahead were dropped (:meth:`BudgetProjector.assumed_dropped`), keeping one only while the
budget stays reachable with it (:meth:`BudgetProjector.reachable`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from amc.errors import BudgetError, ConfigError
from amc.graph.widths import SLACK, rounded_channels
from amc.pruning.depth import DepthCost, canonical, dropped_of, outermost


def check_budget(budget: object, *, name: str = "budget") -> float:
    """Validates a budget fraction; returns it as float."""
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or math.isnan(budget) \
            or not 0.0 < budget <= 1.0:
        raise ConfigError(f"{name} must be a fraction in (0, 1] of the base model's cost, got {budget!r}")
    return float(budget)


class BudgetProjector:
    """Clips keep ratios so the pruned model costs at most ``budget * cost_model.base``.

    Args:
        cost_model: An analytic cost model with ``costs_varying`` (see :mod:`amc.cost.analytic`).
        budget: Fraction of the base cost the pruned model may keep, in (0, 1].
        min_keep: Lowest keep ratio of any layer.
        max_keep: Highest keep ratio of any layer.

    Raises:
        ConfigError: A bad budget or keep range.
        BudgetError: The budget is below the cost of the model with every layer at ``min_keep`` (and, with
            depth, every removable block dropped); the message gives that smallest reachable budget.
    """

    def __init__(self, cost_model, budget: float, *, min_keep: float = 0.2, max_keep: float = 1.0,
                 grid: int = 1000) -> None:
        self.budget = check_budget(budget)
        for name, value in (("min_keep", min_keep), ("max_keep", max_keep)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) \
                    or not 0.0 < value <= 1.0:
                raise ConfigError(f"{name} must be in (0, 1], got {value!r}")
        if min_keep > max_keep:
            raise ConfigError(f"min_keep ({min_keep}) must not exceed max_keep ({max_keep})")
        self.cost_model = cost_model
        self.min_keep = float(min_keep)
        self.max_keep = float(max_keep)
        self.n_layers = len(cost_model.graph.layers)
        self.target = self.budget * cost_model.base
        self._limit = self.target * (1 + 1e-12)
        self._floor = np.full(self.n_layers, self.min_keep)
        smallest = cost_model.cost(self._floor.tolist()) / cost_model.base
        self.widths_reach = smallest <= self.budget + 1e-12
        if not self.widths_reach and isinstance(cost_model, DepthCost):  # dropping blocks may reach it
            smallest = cost_model.cost(self._floor.tolist(), [b.name for b in cost_model.blocks]) / cost_model.base
        if smallest > self.budget + 1e-12:
            every = " and every removable block dropped" if isinstance(cost_model, DepthCost) else ""
            raise BudgetError(
                f"budget {budget} is unreachable: with every layer at min_keep={min_keep}{every} the model keeps "
                f"{smallest:.4f} of its {cost_model.resource}; use a budget >= {math.ceil(smallest * 1e4) / 1e4} "
                "or a lower min_keep"
            )
        self.smallest_budget = smallest
        self._dropped: dict[frozenset[str], BudgetProjector] = {}
        self._candidates = [self._layer_candidates(t, grid) for t in range(self.n_layers)]
        self._walks = bool(getattr(cost_model, "walks", False))
        if self._walks:  # what the layers still to decide take away at min_keep (clip_next's later layers)
            self._floor_channels = cost_model.round_channels(self._floor.copy())
            self._floor_out, self._floor_in = cost_model.suffix_shapes(self._floor_channels)

    def _layer_candidates(self, t: int, grid: int) -> np.ndarray:
        """Keep ratios layer ``t`` can really take in [min_keep, max_keep], ascending."""
        if self.cost_model.granularity == "weight":
            return np.linspace(self.min_keep, self.max_keep, grid + 1)
        n = self.cost_model.graph.layers[t].out_channels
        lo, hi = self.cost_model.round_channels(np.array([self.min_keep, self.max_keep]), n)
        counts = np.unique(self.cost_model.round_channels(np.arange(lo, hi + 1) / n, n))
        ratios = counts / n
        ratios.setflags(write=False)  # fixed: a cost model may remember their channel counts
        return ratios

    def max_keep_at(self, t: int, keep: Sequence[float] | np.ndarray) -> float:
        """The largest keep ratio of layer ``t`` that keeps the budget reachable.

        ``keep[:t]`` are the decided layers; the layers after ``t`` are assumed at ``min_keep``.
        """
        state = self._floor.copy()
        state[:t] = np.asarray(keep, dtype=np.float64)[:t]
        candidates = self._candidates[t]
        costs = self.cost_model.costs_varying(state, t, candidates)
        feasible = np.nonzero(costs <= self.target * (1 + 1e-12))[0]
        # The smallest candidate is always feasible when the prefix was produced by this projector.
        return float(candidates[feasible[-1]]) if len(feasible) else float(candidates[0])

    def clip(self, t: int, keep: Sequence[float] | np.ndarray, action: float) -> float:
        """Action ``action`` of layer ``t``, bounded to ``[min_keep, max_keep]`` and lowered (if needed) to
        the largest keep ratio at or below it that keeps the budget reachable.

        For a cost that grows with every channel (FLOPs, params) that is ``min(action, max_keep_at)``.
        A measured latency need not grow (an odd channel count can run slower than a larger, aligned one),
        so the action's own channel count is checked, and the next feasible count below it taken if needed.
        """
        state = self._floor.copy()
        state[:t] = np.asarray(keep, dtype=np.float64)[:t]
        return self._clipped(t, action, lambda candidates: self.cost_model.costs_varying(state, t, candidates))

    def walk(self):
        """A :class:`~amc.cost.base.PrefixWalk` of the cost model for :meth:`clip_next` (None: use :meth:`clip`)."""
        return self.cost_model.prefix_walk() if self._walks else None

    def clip_next(self, walk, action: float) -> float:
        """:meth:`clip` of the walk's next layer, the layers before it as ``walk`` decided them (the same
        result, in O(modules)); the caller then records its choice with ``walk.decide``."""
        t = walk.t
        out, inp = walk.out - self._floor_out[t], walk.inp - self._floor_in[t]
        floor = self._floor_channels[t]
        return self._clipped(t, action, lambda candidates: self.cost_model.costs_at(out, inp, t, floor, candidates))

    def _clipped(self, t: int, action: float, costs) -> float:
        bounded = min(max(float(action), self.min_keep), self.max_keep)
        candidates = self._candidates[t]
        ok = costs(candidates) <= self._limit
        if self.cost_model.granularity == "weight":  # a grid of ratios; sparse costs grow with every weight
            feasible = np.nonzero(ok)[0]
            return min(bounded, float(candidates[feasible[-1]]) if len(feasible) else float(candidates[0]))
        n = self.cost_model.graph.layers[t].out_channels
        own = int(np.searchsorted(candidates, rounded_channels(bounded, n, self.cost_model.graph.round_to) / n - SLACK))
        own = min(own, len(candidates) - 1)
        if ok[own]:
            return bounded
        below = np.nonzero(ok[:own])[0]
        # The smallest candidate is always feasible when the prefix was produced by this projector.
        return float(candidates[below[-1]]) if len(below) else float(candidates[0])

    def for_dropped(self, dropped: Sequence[str]) -> BudgetProjector:
        """The projector of the model with the blocks ``dropped`` replaced by the identity (this one when none
        is, or the cost model has no blocks): the same budget and keep range, built once per set."""
        if not dropped or not isinstance(self.cost_model, DepthCost):
            return self
        names = frozenset(b.name for b in outermost(self.cost_model.blocks, dropped))
        hit = self._dropped.get(names)
        if hit is None:
            hit = self._dropped[names] = BudgetProjector(self.cost_model.fixed(names), self.budget,
                                                         min_keep=self.min_keep, max_keep=self.max_keep)
        return hit

    def assumed_dropped(self, dropped: Sequence[str], ahead: Sequence[str]) -> list[str]:
        """The blocks a sequential episode's width clipping takes as gone: those ``dropped``, and while widths
        alone cannot reach the budget (:attr:`widths_reach` False) the undecided blocks ``ahead`` too."""
        return list(dropped) if self.widths_reach else [*dropped, *ahead]

    def reachable(self, walk, dropped: Sequence[str]) -> bool:
        """Whether the budget can still be met from ``walk``'s decided widths (later layers at ``min_keep``) with
        the blocks ``dropped`` gone: an episode keeps a block only when this holds with the block kept (and the
        blocks ahead of it dropped, :meth:`assumed_dropped`)."""
        cost = self.cost_model.fixed(dropped) if isinstance(self.cost_model, DepthCost) else self.cost_model
        t = walk.t
        return cost.value_shapes(walk.out - self._floor_out[t], walk.inp - self._floor_in[t]) <= self._limit

    def reaching(self, dropped: Sequence[str]) -> list[str]:
        """``dropped`` and, when the budget is unreachable with only those blocks gone, more blocks (the one whose
        drop lowers the cost at ``min_keep`` the most first) until it is reachable."""
        if not isinstance(self.cost_model, DepthCost):
            return list(dropped)
        blocks = self.cost_model.blocks
        chosen = [b.name for b in outermost(blocks, dropped)]
        floor = self._floor.tolist()
        cost = self.cost_model.cost(floor, chosen)
        while cost > self._limit:
            free = [b.name for b in outermost(blocks, [b.name for b in blocks])
                    if not any(outer.contains(b.name) or b.contains(outer.name)
                               for outer in outermost(blocks, chosen))]
            if not free:  # cannot happen: the constructor checked every block dropped
                break
            cost, best = min((self.cost_model.cost(floor, [*chosen, name]), name) for name in free)
            chosen.append(best)
        return chosen

    def project(self, keep: Sequence[float]) -> list[float]:
        """A feasible policy from any keep ratios: the environment's clipping, applied in layer order.

        Keep ratios that drop blocks (a :class:`~amc.pruning.depth.DepthKeep`) are projected with their
        :meth:`for_dropped` projector and come back canonical (:func:`~amc.pruning.depth.canonical`). When
        widths alone cannot reach the budget, more blocks are dropped first (:meth:`reaching`).
        """
        dropped = dropped_of(keep)
        if isinstance(self.cost_model, DepthCost) and not self.widths_reach:
            dropped = tuple(self.reaching(dropped))
        if dropped and isinstance(self.cost_model, DepthCost):
            projected = self.for_dropped(dropped).project(list(keep))
            return canonical(self.cost_model.graph, self.cost_model.blocks, projected, dropped=dropped)  # type: ignore[return-value]
        if len(keep) != self.n_layers:
            raise ConfigError(f"expected {self.n_layers} keep ratios (one per layer), got {len(keep)}")
        out = np.zeros(self.n_layers)
        walk = self.walk()
        for t, value in enumerate(keep):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or math.isnan(value):
                raise ConfigError(f"keep ratio {t} must be a number, got {value!r}")
            if walk is None:
                out[t] = self.clip(t, out, value)
            else:
                out[t] = self.clip_next(walk, value)
                walk.decide(out[t])
        return out.tolist()

    def feasible(self, keep: Sequence[float]) -> bool:
        """Whether ``keep`` (and the blocks it drops, a :class:`~amc.pruning.depth.DepthKeep`) meets the budget."""
        if dropped_of(keep) and isinstance(self.cost_model, DepthCost):
            return self.cost_model.cost(list(keep), dropped_of(keep)) <= self.target * (1 + 1e-12)
        return self.cost_model.cost(list(keep)) <= self.target * (1 + 1e-12)
