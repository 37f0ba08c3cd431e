"""Analytic cost models: FLOPs and parameters of the model a policy produces.

Costs are computed from the :class:`~amc.graph.discover.LayerGraph` records with the shared rounding rule, so
they equal what ``torch.utils.flop_counter.FlopCounterMode`` counts on the pruned model (per sample)
and its parameter count, exactly. For ``granularity="weight"`` (unstructured pruning) the cost is the
sparse cost: FLOPs of the non-zero weights and the number of non-zero parameters.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from amc.cost.base import ANALYTIC_RESOURCES, ShapeCost
from amc.errors import ConfigError
from amc.graph.discover import LayerGraph
from amc.graph.widths import GRANULARITIES, weights_kept, weights_kept_array


class AnalyticCost(ShapeCost):
    """An exact count from the layer graph, structured (``granularity="channel"``) or unstructured (``"weight"``).

    Structured costs are :class:`~amc.cost.base.ShapeCost` curves; unstructured ones count the non-zero
    weights each decision leaves in the conv/linear layers it owns.
    """

    exact_walk: ClassVar[bool] = True  # the weight branches below are off the walk (``walks`` is channel only)

    def __init__(self, graph: LayerGraph, *, granularity: str = "channel") -> None:
        if granularity not in GRANULARITIES:
            raise ConfigError(f"unknown granularity {granularity!r}: use one of {GRANULARITIES}")
        self.granularity = granularity
        recs = graph.modules
        self._flops_coef = np.array([float(r.flops_coef) for r in recs])
        self._weight_coef = np.array([float(r.weight_coef) for r in recs])
        self._bias_coef = np.array([float(r.vector_coef) for r in recs])
        # FLOPs that do not come from weights (attention matmuls, constant-width layers) for sparse costs.
        self._const_flops = float(graph.other_flops + sum(r.base_flops for r in recs if r.type in ("attention", "mha")))
        self._flops_lin = np.array([float(r.flops_linear) for r in recs])  # FLOPs per output channel alone
        # Unstructured pruning: which decision owns each conv/linear's weights.
        self._owner = np.full(len(recs), -1)
        for d, spec in enumerate(graph.layers):
            for name in spec.members:
                m = next(i for i, r in enumerate(recs) if r.name == name)
                if recs[m].type in ("conv", "depthwise", "linear"):
                    self._owner[m] = d
        self._weight_numel = np.array([float(r.weight_numel) for r in recs])
        super().__init__(graph)

    def cost(self, keep: Sequence[float]) -> float:
        """Cost of the model that ``keep`` (one ratio per decision, in (0, 1]) produces."""
        if self.granularity == "weight":
            return float(self._value_weights(keep))
        return super().cost(keep)

    def costs_varying(self, keep: np.ndarray, t: int, candidates: np.ndarray) -> np.ndarray:
        """Costs when decision ``t`` takes each of ``candidates`` and the others keep ``keep``.

        Vectorised (no Python loop over layers or candidates): the environment calls it on every step.
        ``keep`` and ``candidates`` are keep ratios assumed valid (in (0, 1]).
        """
        if self.granularity != "weight":
            return super().costs_varying(keep, t, candidates)
        keep = np.asarray(keep, dtype=np.float64)
        candidates = np.asarray(candidates, dtype=np.float64)
        kept = self._kept_weights_fast(keep)  # (M,)
        owned = self._owner == t
        numel = self._weight_numel[owned][:, None]  # (m, 1)
        cand = weights_kept_array(candidates[None, :], numel)  # (m, C)
        per_weight = self._per_weight[owned][:, None]
        return self._value_weights_fast(kept) + (per_weight * (cand - kept[owned][:, None])).sum(0)

    def cost_of(self, keep: np.ndarray) -> float:
        """Fast :meth:`cost` for a valid numpy vector of keep ratios (no validation)."""
        if self.granularity == "weight":
            return self._value_weights_fast(self._kept_weights_fast(np.asarray(keep, dtype=np.float64)))
        return super().cost_of(keep)

    def _kept_weights_fast(self, keep: np.ndarray) -> np.ndarray:
        kept = self._weight_numel.copy()
        owned = self._owner >= 0
        ratio = keep[self._owner[owned]]
        kept[owned] = weights_kept_array(ratio, self._weight_numel[owned])
        return kept

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

    def _value_weights(self, keep: Sequence[float]) -> float:
        return self._value_weights_fast(self._kept_weights(keep))

    @abstractmethod
    def _value_weights_fast(self, kept: np.ndarray) -> float:
        """The unstructured cost when the modules keep ``kept`` (M,) non-zero weights."""


class FlopsCost(AnalyticCost):
    """FLOPs per sample, counted as ``FlopCounterMode`` counts them (2 per multiply-accumulate)."""

    resource = "flops"

    def __init__(self, graph: LayerGraph, *, granularity: str = "channel") -> None:
        super().__init__(graph, granularity=granularity)
        self._per_weight = self._flops_coef / np.maximum(self._weight_coef, 1.0)  # 2 * positions

    def _curve(self, out: np.ndarray, inp: np.ndarray) -> np.ndarray:
        return self.graph.other_flops + self._flops_coef @ (out * inp) + self._flops_lin @ out

    def _quadratic_form(self) -> tuple[np.ndarray, np.ndarray]:
        return self._flops_coef, self._flops_lin

    def _value_weights_fast(self, kept: np.ndarray) -> float:
        return float(self._const_flops + self._per_weight @ kept)


class ParamsCost(AnalyticCost):
    """Number of parameters (weights, biases and affine norm parameters)."""

    resource = "params"

    def __init__(self, graph: LayerGraph, *, granularity: str = "channel") -> None:
        super().__init__(graph, granularity=granularity)
        self._per_weight = np.ones(len(graph.modules))

    def _curve(self, out: np.ndarray, inp: np.ndarray) -> np.ndarray:
        return self.graph.other_params + self._weight_coef @ (out * inp) + self._bias_coef @ out

    def _quadratic_form(self) -> tuple[np.ndarray, np.ndarray]:
        return self._weight_coef, self._bias_coef

    def _value_weights_fast(self, kept: np.ndarray) -> float:
        return float(self.graph.total_params - (self._weight_numel - kept).sum())


COST_MODELS = {"flops": FlopsCost, "params": ParamsCost}
assert tuple(COST_MODELS) == ANALYTIC_RESOURCES


def make_cost_model(resource: str, graph: LayerGraph, *, granularity: str = "channel") -> AnalyticCost:
    """Builds the analytic cost model for ``resource`` (one of :data:`~amc.cost.base.ANALYTIC_RESOURCES`)."""
    if resource not in COST_MODELS:
        raise ConfigError(f"unknown resource {resource!r}: use one of {sorted(COST_MODELS)}")
    return COST_MODELS[resource](graph, granularity=granularity)


__all__ = ["COST_MODELS", "AnalyticCost", "FlopsCost", "ParamsCost", "make_cost_model"]
