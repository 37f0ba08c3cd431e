"""Depth pruning: removable blocks replaced by the identity, and the exact cost of a width + depth policy.

A width + depth policy is the keep ratios of the width decisions and the names of the dropped blocks
(:class:`~amc.graph.blocks.Block`). The model it describes is the width-pruned model
(:func:`~amc.pruning.pruner.prune_model`) with those blocks replaced by ``nn.Identity``
(:func:`drop_blocks`): their operators leave the forward pass, so a ``torch.export`` program or an ONNX file
has fewer of them. Widths inside a dropped block change nothing (:func:`canonical_keep` sets them to 1, so
two policies that differ only there are one candidate).

:class:`DepthCost` costs such a model with an analytic cost model: the layers of a dropped block cost what
a layer of zero width costs, nothing; layers on the skip path (the residual stream's decision) are outside
the block and keep their cost; what a block computes that no layer record describes is subtracted as measured.
With the measured latency model the table entries of a dropped block's modules leave the sum
(:meth:`~amc.cost.latency.LatencyCost.without_records`): the identity that replaces it costs nothing.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Collection, Iterable, Sequence

import numpy as np
from torch import nn

from amc.cost.analytic import AnalyticCost
from amc.cost.base import CostModel, ShapeCost
from amc.errors import ConfigError
from amc.graph.blocks import Block
from amc.graph.records import LayerGraph


class DepthKeep(tuple):
    """Keep ratios (one per width decision) that also name the blocks dropped: a width + depth candidate.

    It is a tuple of floats like any keep vector, so code that passes keep vectors around (records, the
    ladder, the deploy rung) carries the dropped blocks along; :attr:`dropped` is sorted, one name each.
    """

    dropped: tuple[str, ...]

    def __new__(cls, keep: Iterable[float], dropped: Iterable[str] = ()) -> DepthKeep:
        self = super().__new__(cls, (float(k) for k in keep))
        self.dropped = tuple(sorted(set(dropped)))
        return self

    def __reduce__(self):
        return DepthKeep, (tuple(self), self.dropped)

    def __repr__(self) -> str:
        return f"DepthKeep({tuple(self)!r}, dropped={self.dropped!r})"


def dropped_of(keep: object) -> tuple[str, ...]:
    """The blocks a keep vector drops: a :class:`DepthKeep`'s, none for a plain sequence."""
    return tuple(getattr(keep, "dropped", ()))


def outermost(blocks: Sequence[Block], dropped: Collection[str]) -> list[Block]:
    """The blocks named in ``dropped``, less those inside another dropped one.

    Raises:
        ConfigError: A name in ``dropped`` is not one of ``blocks``.
    """
    by_name = {b.name: b for b in blocks}
    unknown = [name for name in dropped if name not in by_name]
    if unknown:
        raise ConfigError(f"cannot drop {unknown}: not removable blocks of this model; use one of {sorted(by_name)}")
    chosen = [by_name[name] for name in dict.fromkeys(dropped)]
    return [b for b in chosen if not any(o is not b and o.contains(b.name) for o in chosen)]


def drop_blocks(model: nn.Module, names: Collection[str], *, inplace: bool = False) -> nn.Module:
    """``model`` with the blocks ``names`` replaced by ``nn.Identity`` (a copy unless ``inplace``).

    Drop after width pruning (``drop_blocks(prune_model(model, graph, keep), names, inplace=True)``): module
    names do not change with width pruning, and the identity passes any width through.

    Raises:
        ConfigError: A name is not a submodule of ``model`` or is the model itself.
    """
    model = model if inplace else copy.deepcopy(model)
    for name in dict.fromkeys(names):
        if not name:
            raise ConfigError("cannot drop the whole model: name a block inside it")
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"cannot drop block {name!r}: the model has no such submodule") from None
    for name in sorted(dict.fromkeys(names), key=len):  # outer first; an inner one may be gone already
        try:
            model.get_submodule(name)
        except AttributeError:
            continue
        model.set_submodule(name, nn.Identity())
    return model


def irrelevant_decisions(graph: LayerGraph, blocks: Sequence[Block], *, dropped: Collection[str]) -> list[int]:
    """Indices of the width decisions all of whose layers lie inside the dropped blocks."""
    chosen = outermost(blocks, dropped)
    inside = {r.name for r in graph.modules if any(b.contains(r.name) for b in chosen)}
    touched: dict[int, bool] = {}
    for rec in graph.modules:
        for d, _ in (*rec.out_deps, *rec.in_deps):
            touched[d] = touched.get(d, True) and rec.name in inside
    return [d for d in range(len(graph.layers)) if touched.get(d, False)]


def canonical_keep(graph: LayerGraph, blocks: Sequence[Block], keep: Sequence[float], *,
                   dropped: Collection[str]) -> list[float]:
    """``keep`` with the decisions inside dropped blocks at 1.0: one policy per distinct model."""
    canonical = [float(k) for k in keep]
    for d in irrelevant_decisions(graph, blocks, dropped=dropped):
        canonical[d] = 1.0
    return canonical


def canonical(graph: LayerGraph, blocks: Sequence[Block], keep: Sequence[float], *,
              dropped: Collection[str] | None = None) -> DepthKeep:
    """The one candidate of a width + depth policy: :func:`canonical_keep`, the outermost dropped blocks only.

    ``dropped`` None: the blocks ``keep`` names (a :class:`DepthKeep`).
    """
    dropped = dropped_of(keep) if dropped is None else dropped
    names = [b.name for b in outermost(blocks, dropped)]
    return DepthKeep(canonical_keep(graph, blocks, keep, dropped=names), names)


def _masks(cost_model: object) -> bool:
    """Whether ``cost_model`` leaves modules out itself (the measured latency model's
    :meth:`~amc.cost.latency.LatencyCost.without_records`), rather than by zeroing analytic coefficients."""
    return callable(getattr(cost_model, "without_records", None))


class DepthCost(CostModel):
    """The exact cost of a width + depth policy, from an analytic (channel) cost model and the blocks.

    ``cost(keep, dropped)`` is the width model's cost with every layer record inside a dropped block at zero
    width (zero FLOPs, zero parameters), less the block's FLOPs or parameters no record describes. It equals
    ``FlopCounterMode`` and the parameter count of ``drop_blocks(prune_model(model, graph, keep), dropped)``.

    With a :class:`~amc.cost.latency.LatencyCost` it is the predicted latency of that model: the table entries
    of the modules inside a dropped block count nothing (the identity costs nothing), the rest as predicted.

    Args:
        cost_model: A :class:`~amc.cost.analytic.FlopsCost` or :class:`~amc.cost.analytic.ParamsCost` with
            ``granularity="channel"``, or a :class:`~amc.cost.latency.LatencyCost` (best built with the same
            ``blocks``, so its calibration timed block-dropped models too).
        blocks: The model's removable blocks (:func:`~amc.graph.blocks.find_blocks`).

    Raises:
        ConfigError: Another kind of cost model.
    """

    def __init__(self, cost_model: ShapeCost, blocks: Sequence[Block]) -> None:
        analytic = isinstance(cost_model, AnalyticCost) and cost_model.granularity == "channel"
        if not analytic and not _masks(cost_model):
            raise ConfigError(f"depth pruning is costed with the FLOPs, params or latency model at channel "
                              f"granularity, got {type(cost_model).__name__}; use --granularity channel")
        self.cost_model = cost_model
        self.blocks = tuple(blocks)
        self.resource = cost_model.resource
        self.base = cost_model.base
        names = [r.name for r in cost_model.graph.modules]
        self._alive = {b.name: np.array([0.0 if b.contains(n) else 1.0 for n in names]) for b in self.blocks}
        self._fixed: dict[frozenset[str], AnalyticCost] = {}

    def cost(self, keep: Sequence[float], dropped: Collection[str] | None = None) -> float:
        """Cost of the model ``keep`` gives with the blocks ``dropped`` replaced by the identity (None: the
        blocks a :class:`DepthKeep` names, none for plain keep ratios)."""
        dropped = dropped_of(keep) if dropped is None else dropped
        self.cost_model.graph.channels(keep)  # validates every ratio
        walk = self.cost_model.prefix_walk()
        for k in keep:
            walk.decide(float(k))
        chosen = outermost(self.blocks, dropped)
        if not chosen:
            return walk.cost()
        if _masks(self.cost_model):
            return self.fixed([b.name for b in chosen]).value_shapes(walk.out, walk.inp)
        alive = np.prod([self._alive[b.name] for b in chosen], axis=0)
        constant = sum(b.other_flops if self.resource == "flops" else b.other_params for b in chosen)
        return self.cost_model.value_shapes(walk.out * alive, walk.inp * alive) - constant

    def ratio(self, keep: Sequence[float], dropped: Collection[str] | None = None) -> float:
        """:meth:`cost` as a fraction of :attr:`base`."""
        return self.cost(keep, dropped) / self.base

    def fixed(self, dropped: Collection[str]) -> ShapeCost:
        """The width-only cost model of the base model with ``dropped`` replaced by the identity (same base).

        Its ``cost(keep)`` is ``self.cost(keep, dropped)``, and the budget projection walks it like any analytic
        model: the coefficients of the layers inside are zero (a layer's cost is linear in its coefficients, so
        zeroing them is zeroing its shapes) and what the blocks compute besides their layers leaves the constant.
        """
        chosen = outermost(self.blocks, dropped)
        if not chosen:
            return self.cost_model
        names = frozenset(b.name for b in chosen)
        hit = self._fixed.get(names)
        if hit is None and _masks(self.cost_model):
            alive = np.prod([self._alive[b.name] for b in chosen], axis=0)
            hit = self._fixed[names] = self.cost_model.without_records(alive)
        elif hit is None:
            alive = np.prod([self._alive[b.name] for b in chosen], axis=0)
            hit = copy.copy(self.cost_model)
            for attr in ("_flops_coef", "_flops_lin", "_weight_coef", "_bias_coef"):
                setattr(hit, attr, getattr(self.cost_model, attr) * alive)
            graph = self.cost_model.graph
            hit.graph = dataclasses.replace(graph, other_flops=graph.other_flops - sum(b.other_flops for b in chosen),
                                            other_params=graph.other_params - sum(b.other_params for b in chosen))
            hit._form, hit._coupling, hit._candidate_cache = None, None, {}
            self._fixed[names] = hit
        return hit

    def __getattr__(self, name: str):
        # What the budget projection and the environment read of a width model (graph, granularity, walks,
        # costs_varying, ...) is the width model's: the model with no block dropped.
        if name in ("cost_model", "_alive", "_fixed", "blocks") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.cost_model, name)


__all__ = ["DepthCost", "DepthKeep", "canonical", "canonical_keep", "dropped_of", "drop_blocks", "irrelevant_decisions", "outermost"]
