"""The public bases of the cost models and the resources a budget can constrain.

:class:`CostModel` is the contract every cost model keeps (``base`` and ``cost(keep)``).
:class:`ShapeCost` is what the analytic FLOPs/params models (:mod:`amc.cost.analytic`) and the measured
latency model (:mod:`amc.cost.latency`) share as siblings: a cost that is a function of every module's output
and input channel counts, evaluated for many policies at once (the environment's every step) and, when the
subclass declares :attr:`ShapeCost.exact_walk`, layer by layer through a :class:`PrefixWalk`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from amc.cost.names import ANALYTIC_RESOURCES, RESOURCES  # noqa: F401 (the resources beside the bases)
from amc.graph.discover import LayerGraph
from amc.graph.widths import rounded_channels, rounded_channels_array

# Methods that compute a cost from channel counts: a subclass that redefines one of them without declaring
# ``exact_walk`` may compute something the module shapes alone do not give, so it is taken not to walk.
_CHANNEL_COSTS = ("cost", "cost_of", "costs_varying", "costs_channels", "_value_channels")


class CostModel(ABC):
    """Cost of the model that keep ratios produce.

    Attributes:
        resource: What is counted, one of :data:`RESOURCES`.
        base: The unpruned model's cost; ratios and budgets are fractions of it.
    """

    resource: ClassVar[str] = ""
    base: float

    @abstractmethod
    def cost(self, keep: Sequence[float]) -> float:
        """Cost of the model that ``keep`` (one ratio per decision, in (0, 1]) produces."""

    def ratio(self, keep: Sequence[float]) -> float:
        """:meth:`cost` as a fraction of :attr:`base`."""
        return self.cost(keep) / self.base


class ShapeCost(CostModel):
    """A structured cost that depends only on each module's output and input channel counts.

    Subclasses give ``_curve(out, inp)``: the cost of the models whose modules have ``out`` output and
    ``inp`` input channels, (M, N) arrays with one column per model.

    Attributes:
        exact_walk: Whether costs read from module shapes (:meth:`value_shapes`, :meth:`costs_at`, a
            :class:`PrefixWalk`) equal :meth:`cost` and :meth:`costs_varying` exactly, so the budget
            projection may walk the layers. A subclass that redefines how channel counts are costed
            (``cost``, ``cost_of``, ``costs_varying``, ``costs_channels`` or ``_value_channels``) and does
            not declare it is taken not to walk.
        granularity: ``"channel"``: whole channels are removed.
    """

    exact_walk: ClassVar[bool] = True
    granularity = "channel"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "exact_walk" not in cls.__dict__ and any(name in cls.__dict__ for name in _CHANNEL_COSTS):
            cls.exact_walk = False

    def __init__(self, graph: LayerGraph) -> None:
        self.graph = graph
        recs = graph.modules
        n_dec = len(graph.layers)
        self._n = np.array([s.out_channels for s in graph.layers], dtype=np.float64)  # (D,)
        self._out0 = np.array([r.out_channels for r in recs], dtype=np.float64)  # (M,)
        self._in0 = np.array([r.in_channels if r.has_inputs else 0 for r in recs], dtype=np.float64)
        self._a_out = np.zeros((len(recs), n_dec))  # channels of module m lost per unit of decision d
        self._a_in = np.zeros((len(recs), n_dec))
        for m, rec in enumerate(recs):
            for d, k in rec.out_deps:
                self._a_out[m, d] += k
            for d, k in rec.in_deps:
                self._a_in[m, d] += k
        self._coupling: tuple[np.ndarray, np.ndarray] | None = None  # built on first costs_varying
        self._form: tuple | None = None  # (the _quadratic_form,) once asked
        # Per decision, the modules' channel changes as contiguous rows (costs_varying reads one decision's).
        self._a_out_rows = np.ascontiguousarray(self._a_out.T)  # (D, M)
        self._a_in_rows = np.ascontiguousarray(self._a_in.T)
        self._candidate_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.base = float(self._value_channels(self._n))

    def cost(self, keep: Sequence[float]) -> float:
        """Cost of the model that ``keep`` (one ratio per decision, in (0, 1]) produces."""
        return float(self._value_channels(np.asarray(self.graph.channels(keep), dtype=np.float64)))

    def cost_channels(self, channels: Sequence[int] | np.ndarray) -> float:
        """Cost of the structured model with these channel counts (one per decision)."""
        return float(self._value_channels(np.asarray(channels, dtype=np.float64)))

    def costs_channels(self, channels: np.ndarray) -> np.ndarray:
        """Costs of many structured models at once: ``channels`` is (decisions, models), one column each."""
        channels = np.asarray(channels, dtype=np.float64)
        removed = self._n[:, None] - channels  # (D, N)
        return self._curve(self._out0[:, None] - self._a_out @ removed, self._in0[:, None] - self._a_in @ removed)

    def costs_varying(self, keep: np.ndarray, t: int, candidates: np.ndarray) -> np.ndarray:
        """Costs when decision ``t`` takes each of ``candidates`` and the others keep ``keep``.

        Vectorised (no Python loop over layers or candidates): the environment calls it on every step.
        ``keep`` and ``candidates`` are keep ratios assumed valid (in (0, 1]).
        """
        channels = self.round_channels(np.asarray(keep, dtype=np.float64))
        out, inp = self._shapes(channels)  # (M,)
        return self.costs_at(out, inp, t, channels[t], np.asarray(candidates, dtype=np.float64))

    def costs_at(self, out: np.ndarray, inp: np.ndarray, t: int, channel_t: float,
                 candidates: np.ndarray) -> np.ndarray:
        """:meth:`costs_varying` from the state's module shapes ``out, inp`` (M,) and decision ``t``'s channel
        count in it (structured only): what :class:`PrefixWalk` callers give without the (M, D) products."""
        cand = self._candidate_channels(t, candidates)  # (C,)
        delta = cand - channel_t  # (C,)
        if self._form is None:
            self._form = (self._quadratic_form(),)
        form = self._form[0]
        if form is not None:  # cost = c0 + c1 d + c2 d^2 in the change d of decision t: O(M + C), not O(M C)
            quad, lin = form
            if self._coupling is None:  # per decision: quad @ (a_out * a_in) and lin @ a_out
                self._coupling = (quad @ (self._a_out * self._a_in), lin @ self._a_out)
            c2, lin_t = self._coupling[0][t], self._coupling[1][t]
            c0 = self._curve(out, inp)
            c1 = quad @ (self._a_out_rows[t] * inp + out * self._a_in_rows[t]) + lin_t
            return c0 + delta * (c1 + c2 * delta)  # integers below 2**53: exactly the (M, C) evaluation
        out_c = out[:, None] + self._a_out[:, t, None] * delta[None, :]  # (M, C)
        in_c = inp[:, None] + self._a_in[:, t, None] * delta[None, :]
        return self._curve(out_c, in_c)

    def cost_of(self, keep: np.ndarray) -> float:
        """Fast :meth:`cost` for a valid numpy vector of keep ratios (no validation)."""
        return float(self._value_channels(self.round_channels(np.asarray(keep, dtype=np.float64))))

    def round_channels(self, keep: np.ndarray, n: np.ndarray | float | None = None) -> np.ndarray:
        """Vectorised :func:`amc.graph.widths.channels_for`."""
        return rounded_channels_array(keep, self._n if n is None else n, self.graph.round_to)

    def suffix_shapes(self, channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What decisions ``t, t+1, ...`` at ``channels`` (one count per decision) take from the modules' output
        and input channels: two (D + 1, M) arrays, row ``t`` for the decisions from ``t`` on (row D: none)."""
        removed = self._n - np.asarray(channels, dtype=np.float64)  # (D,)
        out, inp = np.zeros((2, len(removed) + 1, len(self._out0)))
        # Integer-valued float64 sums (far below 2**53): exact in any order, as the (M, D) products are.
        out[:-1] = np.cumsum((self._a_out_rows * removed[:, None])[::-1], axis=0)[::-1]
        inp[:-1] = np.cumsum((self._a_in_rows * removed[:, None])[::-1], axis=0)[::-1]
        return out, inp

    @property
    def walks(self) -> bool:
        """Whether a :class:`PrefixWalk`'s module shapes give this model's costs: structured costs of a class
        that declares :attr:`exact_walk`."""
        return self.exact_walk and self.granularity == "channel"

    def prefix_walk(self) -> PrefixWalk:
        """The module shapes of a policy decided in layer order (structured); see :class:`PrefixWalk`."""
        return PrefixWalk(self)

    def value_shapes(self, out: np.ndarray, inp: np.ndarray) -> float:
        """The cost of the structured model whose modules have ``out`` output and ``inp`` input channels."""
        return float(self._curve(out, inp))

    def _candidate_channels(self, t: int, candidates: np.ndarray) -> np.ndarray:
        """``round_channels(candidates, n_t)``, remembered for read-only arrays (the projector's fixed candidates)."""
        if candidates.flags.writeable:
            return self.round_channels(candidates, self._n[t])
        key = (t, id(candidates))
        hit = self._candidate_cache.get(key)
        if hit is None or hit[0] is not candidates:
            if len(self._candidate_cache) > 4096:
                self._candidate_cache.clear()
            hit = self._candidate_cache[key] = (candidates, self.round_channels(candidates, self._n[t]))
        return hit[1]

    def _quadratic_form(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(quad, lin)`` when the cost is ``const + quad @ (out * in) + lin @ out`` (None: any other curve)."""
        return None

    def _shapes(self, channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        removed = self._n - channels  # (D,)
        return self._out0 - self._a_out @ removed, self._in0 - self._a_in @ removed  # (M,), (M,)

    def _value_channels(self, channels: np.ndarray) -> float:
        return self.value_shapes(*self._shapes(channels))

    @abstractmethod
    def _curve(self, out: np.ndarray, inp: np.ndarray) -> np.ndarray:
        """Costs of the models whose modules have ``out`` output and ``inp`` input channels ((M,) or (M, N))."""


class PrefixWalk:
    """The module shapes of a structured policy decided layer by layer, the layers not yet decided whole.

    :meth:`decide` updates them in O(modules) (one decision's coupling rows), so an environment step or a
    projection costs O(modules) instead of the (modules x decisions) products of :meth:`ShapeCost.cost`.
    The shapes are integer-valued, so every cost read from them equals the direct computation exactly.
    """

    def __init__(self, cost: ShapeCost) -> None:
        self._cost = cost
        self.t = 0
        self.out = cost._out0.copy()  # (M,) output channels with decisions < t applied
        self.inp = cost._in0.copy()

    def decide(self, keep: float) -> None:
        """Decision ``t`` keeps ``keep`` (a valid ratio); moves on to the next decision."""
        cost, t = self._cost, self.t
        n = int(cost._n[t])
        removed = n - rounded_channels(keep, n, cost.graph.round_to)
        if removed:
            self.out -= removed * cost._a_out_rows[t]
            self.inp -= removed * cost._a_in_rows[t]
        self.t = t + 1

    def cost(self) -> float:
        """Cost of the decided layers with every later layer whole."""
        return self._cost.value_shapes(self.out, self.inp)


__all__ = ["ANALYTIC_RESOURCES", "RESOURCES", "CostModel", "PrefixWalk", "ShapeCost"]
