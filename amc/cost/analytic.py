"""Analytic cost models: FLOPs and parameters of the model a policy produces.

Costs are computed from the :class:`~amc.graph.discover.LayerGraph` records with the shared rounding rule, so
they equal what ``torch.utils.flop_counter.FlopCounterMode`` counts on the pruned model (per sample)
and its parameter count, exactly. For ``granularity="weight"`` (unstructured pruning) the cost is the
sparse cost: FLOPs of the non-zero weights and the number of non-zero parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from amc.errors import ConfigError
from amc.graph.discover import LayerGraph
from amc.graph.widths import GRANULARITIES, rounded_channels, rounded_channels_array, weights_kept, weights_kept_array

RESOURCES = ("flops", "params")


@runtime_checkable
class CostModel(Protocol):
    """Cost of the model that keep ratios produce; ``base`` is the unpruned model's cost."""

    resource: str
    base: float

    def cost(self, keep: Sequence[float]) -> float: ...


class _AnalyticCost:
    resource = ""

    def __init__(self, graph: LayerGraph, *, granularity: str = "channel") -> None:
        if granularity not in GRANULARITIES:
            raise ConfigError(f"unknown granularity {granularity!r}: use one of {GRANULARITIES}")
        self.graph = graph
        self.granularity = granularity
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
        self._flops_coef = np.array([float(r.flops_coef) for r in recs])
        self._weight_coef = np.array([float(r.weight_coef) for r in recs])
        self._bias_coef = np.array([float(r.vector_coef) for r in recs])
        # FLOPs that do not come from weights (attention matmuls, constant-width layers) for sparse costs.
        self._const_flops = float(graph.other_flops + sum(r.base_flops for r in recs if r.type == "attention"))
        # Unstructured pruning: which decision owns each conv/linear's weights.
        self._owner = np.full(len(recs), -1)
        for d, spec in enumerate(graph.layers):
            for name in spec.members:
                m = next(i for i, r in enumerate(recs) if r.name == name)
                if recs[m].type in ("conv", "depthwise", "linear"):
                    self._owner[m] = d
        self._weight_numel = np.array([float(r.weight_numel) for r in recs])
        self._coupling: tuple[np.ndarray, np.ndarray] | None = None  # built on first costs_varying
        self._form: tuple | None = None  # (the _quadratic_form,) once asked
        # Per decision, the modules' channel changes as contiguous rows (costs_varying reads one decision's).
        self._a_out_rows = np.ascontiguousarray(self._a_out.T)  # (D, M)
        self._a_in_rows = np.ascontiguousarray(self._a_in.T)
        self._candidate_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.base = float(self._value_channels(self._n))

    def cost(self, keep: Sequence[float]) -> float:
        """Cost of the model that ``keep`` (one ratio per decision, in (0, 1]) produces."""
        if self.granularity == "weight":
            return float(self._value_weights(keep))
        return float(self._value_channels(np.asarray(self.graph.channels(keep), dtype=np.float64)))

    def cost_channels(self, channels: Sequence[int] | np.ndarray) -> float:
        """Cost of the structured model with these channel counts (one per decision)."""
        return float(self._value_channels(np.asarray(channels, dtype=np.float64)))

    def ratio(self, keep: Sequence[float]) -> float:
        return self.cost(keep) / self.base

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
        keep = np.asarray(keep, dtype=np.float64)
        candidates = np.asarray(candidates, dtype=np.float64)
        if self.granularity == "weight":
            kept = self._kept_weights_fast(keep)  # (M,)
            owned = self._owner == t
            numel = self._weight_numel[owned][:, None]  # (m, 1)
            cand = weights_kept_array(candidates[None, :], numel)  # (m, C)
            per_weight = self._per_weight[owned][:, None]
            return self._value_weights_fast(kept) + (per_weight * (cand - kept[owned][:, None])).sum(0)
        channels = self.round_channels(keep)
        out, inp = self._shapes(channels)  # (M,)
        return self.costs_at(out, inp, t, channels[t], candidates)

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

    def cost_of(self, keep: np.ndarray) -> float:
        """Fast :meth:`cost` for a valid numpy vector of keep ratios (no validation)."""
        if self.granularity == "weight":
            return self._value_weights_fast(self._kept_weights_fast(np.asarray(keep, dtype=np.float64)))
        return float(self._value_channels(self.round_channels(np.asarray(keep, dtype=np.float64))))

    def round_channels(self, keep: np.ndarray, n: np.ndarray | float | None = None) -> np.ndarray:
        """Vectorised :func:`amc.graph.widths.channels_for`."""
        return rounded_channels_array(keep, self._n if n is None else n, self.graph.round_to)

    def _kept_weights_fast(self, keep: np.ndarray) -> np.ndarray:
        kept = self._weight_numel.copy()
        owned = self._owner >= 0
        ratio = keep[self._owner[owned]]
        kept[owned] = weights_kept_array(ratio, self._weight_numel[owned])
        return kept

    def _shapes(self, channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        removed = self._n - channels  # (D,)
        return self._out0 - self._a_out @ removed, self._in0 - self._a_in @ removed  # (M,), (M,)

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
        """Whether a :class:`PrefixWalk`'s module shapes give this model's costs (structured only): not for a
        subclass that changes ``costs_varying`` or ``_value_channels`` (a cost not of the shapes alone)."""
        cls = type(self)
        return (self.granularity == "channel" and cls.costs_varying is _AnalyticCost.costs_varying
                and cls._value_channels is _AnalyticCost._value_channels)

    def prefix_walk(self) -> PrefixWalk:
        """The module shapes of a policy decided in layer order (structured); see :class:`PrefixWalk`."""
        return PrefixWalk(self)

    def value_shapes(self, out: np.ndarray, inp: np.ndarray) -> float:
        """The cost of the structured model whose modules have ``out`` output and ``inp`` input channels."""
        return float(self._curve(out, inp))

    def _kept_weights(self, keep: Sequence[float]) -> np.ndarray:
        if len(keep) != len(self.graph.layers):
            raise ConfigError(f"expected {len(self.graph.layers)} keep ratios (one per layer), got {len(keep)}")
        for k, spec in zip(keep, self.graph.layers):
            if not (0.0 < k <= 1.0):
                raise ConfigError(f"keep ratio of {spec.name!r} must be in (0, 1], got {k!r}")
        kept = self._weight_numel.copy()
        for m, d in enumerate(self._owner):
            if d >= 0:
                kept[m] = weights_kept(keep[d], int(self._weight_numel[m]))
        return kept

    def _value_channels(self, channels: np.ndarray) -> float:
        return self.value_shapes(*self._shapes(channels))

    def _curve(self, out: np.ndarray, inp: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _value_weights(self, keep: Sequence[float]) -> float:
        raise NotImplementedError


class FlopsCost(_AnalyticCost):
    """FLOPs per sample, counted as ``FlopCounterMode`` counts them (2 per multiply-accumulate)."""

    resource = "flops"

    def __init__(self, graph: LayerGraph, *, granularity: str = "channel") -> None:
        super().__init__(graph, granularity=granularity)
        self._per_weight = self._flops_coef / np.maximum(self._weight_coef, 1.0)  # 2 * positions

    def _curve(self, out: np.ndarray, inp: np.ndarray) -> np.ndarray:
        return self.graph.other_flops + self._flops_coef @ (out * inp)

    def _quadratic_form(self) -> tuple[np.ndarray, np.ndarray]:
        return self._flops_coef, np.zeros_like(self._flops_coef)

    def _value_weights(self, keep: Sequence[float]) -> float:
        return self._value_weights_fast(self._kept_weights(keep))

    def _value_weights_fast(self, kept: np.ndarray) -> float:
        return float(self._const_flops + self._per_weight @ kept)


class ParamsCost(_AnalyticCost):
    """Number of parameters (weights, biases and affine norm parameters)."""

    resource = "params"

    def __init__(self, graph: LayerGraph, *, granularity: str = "channel") -> None:
        super().__init__(graph, granularity=granularity)
        self._per_weight = np.ones(len(graph.modules))

    def _curve(self, out: np.ndarray, inp: np.ndarray) -> np.ndarray:
        return self.graph.other_params + self._weight_coef @ (out * inp) + self._bias_coef @ out

    def _quadratic_form(self) -> tuple[np.ndarray, np.ndarray]:
        return self._weight_coef, self._bias_coef

    def _value_weights(self, keep: Sequence[float]) -> float:
        return self._value_weights_fast(self._kept_weights(keep))

    def _value_weights_fast(self, kept: np.ndarray) -> float:
        return float(self.graph.total_params - (self._weight_numel - kept).sum())


COST_MODELS = {"flops": FlopsCost, "params": ParamsCost}


def make_cost_model(resource: str, graph: LayerGraph, *, granularity: str = "channel") -> _AnalyticCost:
    """Builds the analytic cost model for ``resource`` (``"flops"`` or ``"params"``)."""
    if resource not in COST_MODELS:
        raise ConfigError(f"unknown resource {resource!r}: use one of {sorted(COST_MODELS)}")
    return COST_MODELS[resource](graph, granularity=granularity)


class PrefixWalk:
    """The module shapes of a structured policy decided layer by layer, the layers not yet decided whole.

    :meth:`decide` updates them in O(modules) (one decision's coupling rows), so an environment step or a
    projection costs O(modules) instead of the (modules x decisions) products of :meth:`_AnalyticCost.cost`.
    The shapes are integer-valued, so every cost read from them equals the direct computation exactly.
    """

    def __init__(self, cost: _AnalyticCost) -> None:
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
