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
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence

import numpy as np
from torch import nn

from amc.cost.analytic import AnalyticCost
from amc.cost.base import CostModel
from amc.errors import ConfigError
from amc.graph.blocks import Block
from amc.graph.records import LayerGraph


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


class DepthCost(CostModel):
    """The exact cost of a width + depth policy, from an analytic (channel) cost model and the blocks.

    ``cost(keep, dropped)`` is the width model's cost with every layer record inside a dropped block at zero
    width (zero FLOPs, zero parameters), less the block's FLOPs or parameters no record describes. It equals
    ``FlopCounterMode`` and the parameter count of ``drop_blocks(prune_model(model, graph, keep), dropped)``.

    Args:
        cost_model: A :class:`~amc.cost.analytic.FlopsCost` or :class:`~amc.cost.analytic.ParamsCost` with
            ``granularity="channel"`` (latency needs a table measured on the dropped models).
        blocks: The model's removable blocks (:func:`~amc.graph.blocks.find_blocks`).

    Raises:
        ConfigError: Another kind of cost model.
    """

    def __init__(self, cost_model: AnalyticCost, blocks: Sequence[Block]) -> None:
        if not isinstance(cost_model, AnalyticCost) or cost_model.granularity != "channel":
            raise ConfigError(f"depth pruning is costed with the analytic FLOPs or params model at channel "
                              f"granularity, got {type(cost_model).__name__}; use --resource flops or params")
        self.cost_model = cost_model
        self.blocks = tuple(blocks)
        self.resource = cost_model.resource
        self.base = cost_model.base
        names = [r.name for r in cost_model.graph.modules]
        self._alive = {b.name: np.array([0.0 if b.contains(n) else 1.0 for n in names]) for b in self.blocks}

    def cost(self, keep: Sequence[float], dropped: Collection[str] = ()) -> float:
        """Cost of the model ``keep`` gives with the blocks ``dropped`` replaced by the identity."""
        self.cost_model.graph.channels(keep)  # validates every ratio
        walk = self.cost_model.prefix_walk()
        for k in keep:
            walk.decide(float(k))
        chosen = outermost(self.blocks, dropped)
        if not chosen:
            return walk.cost()
        alive = np.prod([self._alive[b.name] for b in chosen], axis=0)
        constant = sum(b.other_flops if self.resource == "flops" else b.other_params for b in chosen)
        return self.cost_model.value_shapes(walk.out * alive, walk.inp * alive) - constant

    def ratio(self, keep: Sequence[float], dropped: Collection[str] = ()) -> float:
        """:meth:`cost` as a fraction of :attr:`base`."""
        return self.cost(keep, dropped) / self.base


__all__ = ["DepthCost", "canonical_keep", "drop_blocks", "irrelevant_decisions", "outermost"]
