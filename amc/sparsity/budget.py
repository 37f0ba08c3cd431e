"""The budget of a sparse language model: the fraction of its prunable weights kept, feasible by construction.

A policy gives each unit (block or layer, :class:`~amc.sparsity.layers.SparsityUnit`) a sparsity. The budget
``b`` asks for a size-weighted average sparsity of exactly ``1 - b``:

- Unstructured: :meth:`SparsityBudget.project` maps any sparsities to the nearest (in the size-weighted L2
  sense) vector in ``[min_sparsity, max_sparsity]`` whose weighted average is the target: every value shifted
  by one constant, clipped to the range (the constant found by bisection, then solved exactly on the
  unclipped units). :meth:`SparsityBudget.counts` turns unit sparsities into integer counts of weights to
  remove per layer (largest remainders over the whole model), so a projected policy removes exactly
  ``round((1 - b) * total)`` weights.
- N:M: each unit takes a level (dense, 2:4, 1:4, ...). :meth:`SparsityBudget.project_levels` snaps wanted
  sparsities to the nearest allowed level, then moves units one level sparser (the one furthest below what it
  asked for first) until the average sparsity reaches the target, and back denser where the target still holds.
  The average is at least the target (levels are discrete; it is exact only when the levels allow it).
  :meth:`SparsityBudget.project_levels_exact` is the search's projection: the levels nearest to what was asked
  (size-weighted L2) among those that remove the fewest weights at or above the target, exactly the target
  whenever some choice of levels makes it.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from amc.errors import BudgetError, ConfigError
from amc.sparsity.criteria import DENSE, NM, parse_level
from amc.sparsity.layers import SparsityLayout

log = logging.getLogger(__name__)
EXACT_STATES = 2_000_000  # project_levels_exact's table (units x reachable totals) above which it falls back


def _fraction(value: object, name: str, *, low_open: bool, high_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) \
            or value < 0 or value > 1 or (low_open and value == 0) or (high_open and value == 1):
        bounds = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ConfigError(f"{name} must be in {bounds}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class SparsityBudget:
    """Keep at most ``budget`` of the prunable weights of ``layout`` (the average sparsity is ``1 - budget``).

    Attributes:
        layout: The model's prunable layers and units.
        budget: Fraction of the prunable weights kept, in (0, 1].
        min_sparsity: Lowest sparsity of a unit (unstructured).
        max_sparsity: Highest sparsity of a unit (unstructured), below 1.
        levels: The N:M levels a unit may take (``project_levels``), densest first after sorting.
    """

    layout: SparsityLayout
    budget: float
    min_sparsity: float = 0.0
    max_sparsity: float = 0.95
    levels: tuple[NM, ...] = (DENSE, NM(2, 4), NM(1, 4))

    def __post_init__(self) -> None:
        _fraction(self.budget, "budget (the fraction of prunable weights kept)", low_open=True, high_open=False)
        _fraction(self.min_sparsity, "min_sparsity", low_open=False, high_open=True)
        _fraction(self.max_sparsity, "max_sparsity", low_open=False, high_open=True)
        if self.min_sparsity > self.max_sparsity:
            raise ConfigError(f"min_sparsity ({self.min_sparsity}) must not exceed max_sparsity ({self.max_sparsity})")
        object.__setattr__(self, "levels", tuple(sorted({parse_level(x) for x in self.levels},
                                                        key=lambda x: (x.sparsity, x.group))))

    @property
    def target(self) -> float:
        """The average sparsity asked for: ``1 - budget``."""
        return 1.0 - self.budget

    @property
    def sizes(self) -> list[int]:
        return [unit.numel for unit in self.layout.units]

    def average(self, sparsities: Sequence[float | NM]) -> float:
        """Size-weighted average sparsity of unit sparsities (or levels)."""
        values = [x.sparsity if isinstance(x, NM) else float(x) for x in self._checked(sparsities)]
        return sum(n * s for n, s in zip(self.sizes, values)) / self.layout.total

    def uniform(self) -> list[float]:
        """The target sparsity in every unit (the uniform baseline)."""
        return self.project([self.target] * len(self.layout.units))

    def _checked(self, values: Sequence) -> Sequence:
        if len(values) != len(self.layout.units):
            raise ConfigError(f"expected {len(self.layout.units)} sparsities (one per {self.layout.per}), "
                              f"got {len(values)}")
        return values

    def project(self, sparsities: Sequence[float]) -> list[float]:
        """The sparsities in ``[min_sparsity, max_sparsity]`` nearest to ``sparsities`` with the target average.

        Raises:
            BudgetError: The target is outside ``[min_sparsity, max_sparsity]``.
        """
        values = [float(x) for x in self._checked(sparsities)]
        for i, v in enumerate(values):
            if not math.isfinite(v):
                raise ConfigError(f"sparsity {i} ({self.layout.units[i].name}) must be a finite number, got {v!r}")
        lo, hi, target = self.min_sparsity, self.max_sparsity, self.target
        if not lo - 1e-12 <= target <= hi + 1e-12:
            raise BudgetError(f"budget {self.budget} asks for an average sparsity of {target:.4f}, outside "
                              f"[min_sparsity, max_sparsity] = [{lo}, {hi}]: widen the range or change the budget")
        sizes, total = self.sizes, self.layout.total

        def weighted(c: float) -> float:
            return sum(n * min(max(v + c, lo), hi) for n, v in zip(sizes, values)) / total

        a, b = lo - max(values) - 1.0, hi - min(values) + 1.0  # weighted(a) = lo <= target <= hi = weighted(b)
        for _ in range(200):
            mid = (a + b) / 2
            if weighted(mid) < target:
                a = mid
            else:
                b = mid
        c = (a + b) / 2
        free = [i for i, v in enumerate(values) if lo < v + c < hi]
        if free:  # solve the shift exactly on the units the clipping leaves free
            fixed = sum(n * min(max(v + c, lo), hi) for i, (n, v) in enumerate(zip(sizes, values)) if i not in free)
            c = (target * total - fixed - sum(sizes[i] * values[i] for i in free)) / sum(sizes[i] for i in free)
        return [min(max(v + c, lo), hi) for v in values]

    def counts(self, sparsities: Sequence[float]) -> dict[str, int]:
        """:func:`layer_counts` of unit sparsities."""
        return layer_counts(self.layout, self._checked(sparsities))

    def allowed_levels(self) -> list[tuple[NM, ...]]:
        """The levels each unit can take: those whose group divides the inputs of every member layer."""
        layers = {x.name: x for x in self.layout.layers}
        return [tuple(v for v in self.levels if v.dense or all(layers[m].in_features % v.group == 0
                                                                for m in unit.members))
                for unit in self.layout.units]

    def project_levels(self, sparsities: Sequence[float | NM]) -> list[NM]:
        """One level per unit near the wanted sparsities (or levels) whose average sparsity reaches the target.

        Raises:
            BudgetError: Even the sparsest allowed level everywhere misses the target.
        """
        wanted = [x.sparsity if isinstance(x, NM) else float(x) for x in self._checked(sparsities)]
        allowed = self.allowed_levels()
        sizes, need = self.sizes, self.target * self.layout.total - 1e-9 * self.layout.total
        most = sum(n * a[-1].sparsity for n, a in zip(sizes, allowed))
        if most < need:
            raise BudgetError(f"budget {self.budget} is unreachable with levels {[str(x) for x in self.levels]}: "
                              f"the sparsest allowed level everywhere keeps {1 - most / self.layout.total:.4f}; "
                              "use a larger budget or add a sparser level")
        pick = [min(range(len(a)), key=lambda j: (abs(a[j].sparsity - w), -j)) for a, w in zip(allowed, wanted)]

        def removed() -> float:
            return sum(n * a[j].sparsity for n, a, j in zip(sizes, allowed, pick))

        while removed() < need:  # sparser where the unit is furthest below what it asked for
            i = max((i for i in range(len(pick)) if pick[i] + 1 < len(allowed[i])),
                    key=lambda i: (wanted[i] - allowed[i][pick[i]].sparsity, sizes[i], -i))
            pick[i] += 1
        moved = True
        while moved:  # denser where the unit got more than it asked for and the target still holds
            moved = False
            over = sorted((i for i in range(len(pick)) if pick[i] > 0 and allowed[i][pick[i]].sparsity > wanted[i]),
                          key=lambda i: (-(allowed[i][pick[i]].sparsity - wanted[i]), i))
            for i in over:
                step = sizes[i] * (allowed[i][pick[i]].sparsity - allowed[i][pick[i] - 1].sparsity)
                if removed() - step >= need:
                    pick[i] -= 1
                    moved = True
                    break
        return [a[j] for a, j in zip(allowed, pick)]


    def project_levels_exact(self, sparsities: Sequence[float | NM]) -> list[NM]:
        """One level per unit, nearest to the wanted sparsities (size-weighted L2), among the choices that remove
        the fewest weights at or above the target: exactly the target whenever the levels can make it.

        An exact knapsack over the weights each unit removes at each level (counted as
        :func:`nm_counts` counts them), in steps of their greatest common divisor. Where that table would exceed
        :data:`EXACT_STATES` entries (layer sizes with no large common factor), :meth:`project_levels` decides
        instead (at least the target), with a warning.

        Raises:
            BudgetError: Even the sparsest allowed level everywhere misses the target.
        """
        wanted = [x.sparsity if isinstance(x, NM) else float(x) for x in self._checked(sparsities)]
        allowed = self.allowed_levels()
        layers = {x.name: x for x in self.layout.layers}
        removed = [[sum(layers[m].numel - layers[m].numel // v.group * v.keep for m in unit.members) for v in a]
                   for unit, a in zip(self.layout.units, allowed)]
        total = self.layout.total
        need = max(0, math.ceil(self.target * total - 1e-9 * total))
        if sum(max(r) for r in removed) < need:
            return self.project_levels(wanted)  # raises: the budget is unreachable with these levels
        step = math.gcd(*(r for rs in removed for r in rs)) or 1
        states = -(-(need + max(max(r) for r in removed)) // step) + 1  # some total in [need, need + max) is reachable
        if states * len(removed) > EXACT_STATES:
            log.warning("N:M levels: %d units x %d totals is too fine a table for the exact projection; levels "
                        "chosen by project_levels (average sparsity at least the target)", len(removed), states)
            return self.project_levels(wanted)
        cost = np.full(states, np.inf)
        cost[0] = 0.0
        choice = np.zeros((len(removed), states), dtype=np.int16)
        for i, (levels, counts) in enumerate(zip(allowed, removed)):
            new = np.full(states, np.inf)
            for j, (level, count) in enumerate(zip(levels, counts)):
                shift = count // step
                if shift >= states:
                    continue
                candidate = cost[: states - shift] + self.sizes[i] * (level.sparsity - wanted[i]) ** 2
                better = candidate < new[shift:]
                new[shift:][better] = candidate[better]
                choice[i, shift:][better] = j
            cost = new
        first = -(-need // step)
        reached = np.nonzero(np.isfinite(cost[first:]))[0]
        t = first + int(reached[0])
        pick = []
        for i in range(len(removed) - 1, -1, -1):  # back from the total reached
            j = int(choice[i, t])
            pick.append(allowed[i][j])
            t -= removed[i][j] // step
        return pick[::-1]


def layer_levels(layout: SparsityLayout, levels: Sequence[NM]) -> dict[str, NM]:
    """Unit levels as one level per layer."""
    if len(levels) != len(layout.units):
        raise ConfigError(f"expected {len(layout.units)} levels (one per {layout.per}), got {len(levels)}")
    return {member: level for unit, level in zip(layout.units, levels) for member in unit.members}


def nm_counts(layout: SparsityLayout, levels: Sequence[NM]) -> dict[str, int]:
    """Weights removed per layer by unit levels (exact: every group of M loses M - N)."""
    layers = {x.name: x for x in layout.layers}
    return {name: layers[name].numel - layers[name].numel // level.group * level.keep
            for name, level in layer_levels(layout, levels).items()}



def layer_counts(layout: SparsityLayout, sparsities: Sequence[float]) -> dict[str, int]:
    """Weights to remove per layer for unit sparsities: ``round(sum(s * numel))`` in all, spread over the
    layers by largest remainders (each layer within one weight of its unit's sparsity)."""
    if len(sparsities) != len(layout.units):
        raise ConfigError(f"expected {len(layout.units)} sparsities (one per {layout.per}), got {len(sparsities)}")
    layers = {x.name: x for x in layout.layers}
    names, wanted = [], []
    for unit, s in zip(layout.units, sparsities):
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not 0.0 <= s <= 1.0:
            raise ConfigError(f"sparsity of {unit.name} must be in [0, 1], got {s!r}")
        for member in unit.members:
            names.append(member)
            wanted.append(float(s) * layers[member].numel)
    total = round(sum(wanted))
    floors = [min(math.floor(w), layers[n].numel) for n, w in zip(names, wanted)]
    order = sorted(range(len(names)), key=lambda i: (-(wanted[i] - floors[i]), i))
    for i in order[: max(0, total - sum(floors))]:
        floors[i] += 1
    return dict(zip(names, floors))
