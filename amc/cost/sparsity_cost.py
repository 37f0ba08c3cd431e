"""The decisions and the cost of a per-unit sparsity search on a language model (issue 36).

A search over sparsity decisions talks to :class:`~search.problem.SearchProblem` through the same two objects
as a channel search: a *graph* (the decisions, by name, and what makes two candidates the same) and a *cost
model* (what a candidate keeps). Here:

- :class:`SparsityGraph` stands where a :class:`~amc.graph.records.LayerGraph` stands: one decision per
  :class:`~amc.sparsity.layers.SparsityUnit` (a transformer block or a linear layer), in forward order. A
  decision's keep ratio is ``1 - sparsity`` of its unit, so a policy (:class:`~amc.pruning.policy.Policy`,
  ``granularity="weight"``) is a per-unit fraction of weights kept, and ``policy.json`` has the usual shape.
- :class:`SparsityCost` is the resource ``params`` restricted to the prunable weights: the number of weights a
  candidate keeps, counted with the same rounding the pruning applies
  (:func:`~amc.sparsity.budget.layer_counts`), so a policy's recorded cost is the masked model's, exactly.
  Its base is every prunable weight, so a cost ratio is the fraction of prunable weights kept, and a budget
  of 0.5 is an average sparsity of 50%.

With N:M levels (:attr:`SparsityGraph.levels`, e.g. dense, 2:4 and 1:4) a decision is still a keep ratio, read
as the unit's nearest allowed level (:meth:`SparsityGraph.unit_levels`: 0.5 is 2:4, 0.25 is 1:4); the search's
projection (:class:`~envs.sparsity_projection.SparsityProjector`) only proposes the levels' own ratios, so a
recorded keep ratio *is* its level. Weights are then counted per level (:func:`~amc.sparsity.budget.nm_counts`),
the masks' count exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from amc.errors import ConfigError
from amc.graph.records import LayerSpec
from amc.sparsity.budget import SparsityBudget, layer_counts, nm_counts
from amc.sparsity.criteria import NM, parse_levels
from amc.sparsity.layers import SparsityLayout, SparsityUnit

RESOURCE = "params"  # the prunable weights kept: what a policy.json's resource says
GRANULARITY = "weight"


@dataclass(frozen=True)
class SparsityGraph:
    """The sparsity decisions of a model, with the interface a search reads from a layer graph.

    Attributes:
        layout: The prunable layers and units (:func:`~amc.sparsity.layers.discover_sparse`).
        fingerprint: :func:`amc.graph.records.fingerprint` of the dense model (a policy of another model is
            refused, as for channels).
        levels: The N:M levels a decision takes (``("dense", "2:4", "1:4")`` or :class:`~amc.sparsity.NM`
            patterns, kept densest first); empty: unstructured sparsity.
    """

    layout: SparsityLayout
    fingerprint: str
    round_to: int = 1  # what a layer graph's readers expect; weights are counted one by one
    skipped: tuple = ()
    levels: tuple[NM, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", parse_levels(self.levels))

    def __len__(self) -> int:
        return len(self.layout.units)

    def __iter__(self):
        return iter(self.layout.units)

    def __getitem__(self, index: int) -> SparsityUnit:
        return self.layout.units[index]

    @cached_property
    def layers(self) -> tuple[LayerSpec, ...]:
        """One :class:`~amc.graph.records.LayerSpec` per unit, in forward order: what the environment's observation
        reads (kind ``linear``, the widest input, the summed outputs, ``params`` and ``flops`` per token = the
        unit's weights)."""
        specs = []
        for unit in self.layout.units:
            members = [self.layout.layer(m) for m in unit.members]
            specs.append(LayerSpec(name=unit.name, kind="linear", in_channels=max(x.in_features for x in members),
                                   out_channels=sum(x.out_features for x in members), kernel=1, stride=1, groups=1,
                                   in_hw=(1, 1), out_hw=(1, 1), flops=unit.numel, params=unit.numel,
                                   members=unit.members))
        return tuple(specs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(unit.name for unit in self.layout.units)

    def sparsities(self, keep: Sequence[float]) -> list[float]:
        """Unit sparsities ``1 - keep`` after checking one keep ratio in (0, 1] per unit.

        Raises:
            ConfigError: Not one ratio per unit, or a ratio outside (0, 1].
        """
        if len(keep) != len(self.layout.units):
            raise ConfigError(f"expected {len(self.layout.units)} keep ratios (one per {self.layout.per}), "
                              f"got {len(keep)}")
        out = []
        for unit, k in zip(self.layout.units, keep):
            if isinstance(k, bool) or not isinstance(k, (int, float, np.floating)) or not 0.0 < k <= 1.0:
                raise ConfigError(f"keep ratio of {unit.name} must be in (0, 1], got {k!r}")
            out.append(min(max(1.0 - float(k), 0.0), 1.0))
        return out

    @cached_property
    def allowed_levels(self) -> tuple[tuple[NM, ...], ...]:
        """Per unit, the levels it can take, densest first (a level whose M does not divide a member's inputs is
        left out: :meth:`~amc.sparsity.budget.SparsityBudget.allowed_levels`); empty without levels."""
        if not self.levels:
            return ()
        return tuple(SparsityBudget(self.layout, 1.0, levels=self.levels).allowed_levels())

    @cached_property
    def level_keeps(self) -> tuple[np.ndarray, ...]:
        """Per unit, the keep ratios of :attr:`allowed_levels`."""
        return tuple(np.array([v.keep / v.group for v in a]) for a in self.allowed_levels)

    def _nearest(self, t: int, keep: np.ndarray) -> np.ndarray:
        """Index into unit ``t``'s allowed levels of the level nearest each keep ratio (a tie: the sparser)."""
        ratios = self.level_keeps[t]
        distance = np.abs(np.asarray(keep, dtype=np.float64)[..., None] - ratios)  # (..., levels)
        return len(ratios) - 1 - np.argmin(distance[..., ::-1], axis=-1)

    def snapped(self, t: int, keep: np.ndarray) -> np.ndarray:
        """Unit ``t``'s keep ratios as its levels keep them (themselves without levels)."""
        return self.level_keeps[t][self._nearest(t, keep)] if self.levels else np.asarray(keep, dtype=np.float64)

    def unit_levels(self, keep: Sequence[float]) -> list[NM]:
        """The N:M level of each unit: the allowed level nearest its keep ratio.

        Raises:
            ConfigError: The graph has no levels, or bad keep ratios.
        """
        if not self.levels:
            raise ConfigError("this search's decisions are unstructured sparsities, not N:M levels: build the "
                              "context with levels, e.g. LMContextConfig(levels=('dense', '2:4', '1:4'))")
        self.sparsities(keep)  # validates count and range
        return [self.allowed_levels[t][int(self._nearest(t, float(k)))] for t, k in enumerate(keep)]

    def level_names(self, keep: Sequence[float]) -> dict[str, str]:
        """Unit name -> its level (``"2:4"``, ``"dense"``), what a policy records beside the keep ratios."""
        return {unit.name: str(level) for unit, level in zip(self.layout.units, self.unit_levels(keep))}

    def decisions(self, keep: Sequence[float]) -> list[float] | list[NM]:
        """What :func:`~amc.sparsity.apply.sparsify` takes: unit sparsities, or with levels the units' levels."""
        return self.unit_levels(keep) if self.levels else self.sparsities(keep)

    def removed(self, keep: Sequence[float]) -> dict[str, int]:
        """Weights each layer loses under ``keep`` (the counts :func:`~amc.sparsity.apply.sparsify` masks)."""
        if self.levels:
            return nm_counts(self.layout, self.unit_levels(keep))
        return layer_counts(self.layout, self.sparsities(keep))

    def channels(self, keep: Sequence[float]) -> tuple[int, ...]:
        """Weights kept per unit (``Policy.channels``, informative)."""
        removed = self.removed(keep)
        return tuple(unit.numel - sum(removed[m] for m in unit.members) for unit in self.layout.units)

    def candidate_key(self, keep: Sequence[float], granularity: str = GRANULARITY) -> tuple[int, ...]:
        """What makes two keep vectors the same sparse model: the weights removed from each layer.

        Raises:
            ConfigError: A granularity other than ``weight``, or bad keep ratios.
        """
        if granularity != GRANULARITY:
            raise ConfigError(f"sparsity decisions have granularity {GRANULARITY!r}, got {granularity!r}")
        removed = self.removed(keep)
        return tuple(removed[x.name] for x in self.layout.layers)


class SparsityCost:
    """Prunable weights kept by a candidate; base: every prunable weight.

    :meth:`cost` is exact (the masked model keeps that many); :meth:`costs_varying`, which the projection's
    AMC clipping reads, is its continuous form (within one weight of it).
    """

    resource = RESOURCE
    granularity = GRANULARITY
    walks = False  # no prefix walk: the projection calls costs_varying

    def __init__(self, graph: SparsityGraph) -> None:
        self.graph = graph
        self.numel = np.array([unit.numel for unit in graph.layout.units], dtype=np.float64)
        self.base = float(graph.layout.total)

    def cost(self, keep: Sequence[float]) -> float:
        """Weights kept (an integer, as float)."""
        return self.base - float(sum(self.graph.removed(list(keep)).values()))

    def cost_of(self, keep: np.ndarray) -> float:
        """:meth:`cost` (the environment's name for it)."""
        return self.cost(np.asarray(keep, dtype=np.float64).tolist())

    def ratio(self, keep: Sequence[float]) -> float:
        """Fraction of the prunable weights kept (1 - the average sparsity)."""
        return self.cost(keep) / self.base

    def costs_varying(self, state: np.ndarray, t: int, candidates: np.ndarray) -> np.ndarray:
        """The (continuous) cost of ``state`` with unit ``t`` at each of ``candidates`` (with levels, each keep
        ratio at its nearest level: the exact count)."""
        state = np.asarray(state, dtype=np.float64)
        if self.graph.levels:
            state = np.array([float(self.graph.snapped(i, k)) for i, k in enumerate(state)])
        rest = float(self.numel @ state) - self.numel[t] * state[t]
        return rest + self.numel[t] * self.graph.snapped(t, candidates)

    def removed_target(self, budget: float) -> int:
        """Weights a policy at ``budget`` removes: ``round((1 - budget) * base)`` (what the exact projection
        and :func:`~amc.sparsity.budget.layer_counts` give)."""
        return round((1.0 - budget) * self.base)


__all__ = ["GRANULARITY", "RESOURCE", "SparsityCost", "SparsityGraph"]
