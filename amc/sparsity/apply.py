"""Sparsity applied to a model in place: ``torch.nn.utils.prune`` masks during a search, baked for export.

:func:`sparsify` prunes each layer by a criterion (:mod:`amc.sparsity.criteria`) to its planned count or N:M
level and attaches the mask with ``prune.custom_from_mask`` (the module's ``weight`` is then
``weight_orig * weight_mask``); SparseGPT's reconstructed values go into ``weight_orig`` first. A search holds
one model: :func:`restore` puts the dense weights back (from :func:`dense_weights`) before the next candidate,
and :func:`bake` makes the zeros permanent (``prune.remove``) for export.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from amc.errors import ConfigError
from amc.sparsity import criteria
from amc.sparsity.budget import layer_counts, layer_levels
from amc.sparsity.calibrate import LayerStats, calibrate
from amc.sparsity.criteria import NM
from amc.sparsity.layers import SparseLinear, SparsityLayout, to_stored, weight_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SparsityPlan:
    """What each layer loses: a count of weights (unstructured) or an N:M level, by layer name."""

    counts: Mapping[str, int]
    levels: Mapping[str, NM]

    @classmethod
    def of(cls, layout: SparsityLayout, decisions: Sequence[float] | Sequence[NM]) -> SparsityPlan:
        """The plan of one decision per unit: sparsities (unstructured, exact counts by
        :func:`~amc.sparsity.budget.layer_counts`) or N:M levels (``NM`` objects or ``"2:4"`` strings)."""
        values = list(decisions)
        if values and all(isinstance(x, (NM, str)) for x in values):
            return cls({}, layer_levels(layout, [criteria.parse_level(x) for x in values]))
        if any(isinstance(x, (NM, str)) for x in values):
            raise ConfigError("decisions are either all sparsities (numbers) or all N:M levels, not a mix")
        return cls(layer_counts(layout, values), {})

    def removed(self, layer: SparseLinear) -> int:
        """The number of weights the plan removes from ``layer``."""
        if layer.name in self.levels:
            level = self.levels[layer.name]
            return layer.numel - layer.numel // level.group * level.keep
        return int(self.counts.get(layer.name, 0))


def dense_weights(model: nn.Module, layout: SparsityLayout) -> dict[str, Tensor]:
    """Copies of the stored weights of every prunable layer (for :func:`restore`); the model must be dense."""
    modules = dict(model.named_modules())
    if any(prune.is_pruned(modules[x.name]) for x in layout.layers):
        raise ConfigError("the model already carries pruning masks: take dense_weights from the dense model")
    return {x.name: modules[x.name].weight.detach().clone() for x in layout.layers}


def restore(model: nn.Module, layout: SparsityLayout, dense: Mapping[str, Tensor]) -> None:
    """Removes the masks and puts the dense weights back."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for layer in layout.layers:
            module = modules[layer.name]
            if hasattr(module, "weight_mask"):
                prune.remove(module, "weight")
            module.weight.copy_(dense[layer.name])


def bake(model: nn.Module, layout: SparsityLayout) -> nn.Module:
    """Makes the masks permanent (``prune.remove``): plain weights with zeros, no hooks; returns ``model``."""
    modules = dict(model.named_modules())
    for layer in layout.layers:
        if hasattr(modules[layer.name], "weight_mask"):
            prune.remove(modules[layer.name], "weight")
    return model


def _stats_for(name: str, criterion: str, stats: Mapping[str, LayerStats] | None) -> LayerStats | None:
    if criterion == "magnitude":
        return None
    entry = None if stats is None else stats.get(name)
    if entry is None:
        raise ConfigError(f"criterion {criterion!r} needs calibration statistics of layer {name!r}: run "
                          "amc.sparsity.calibrate(model, layout, batches) first")
    if criterion == "sparsegpt" and entry.hessian is None:
        raise ConfigError(f"criterion 'sparsegpt' needs Hessians: calibrate with hessian=True (layer {name!r})")
    return entry


def sparsify(model: nn.Module, layout: SparsityLayout, decisions: Sequence[float] | Sequence[NM] | SparsityPlan, *,
             criterion: str = "wanda", stats: Mapping[str, LayerStats] | None = None,
             blocksize: int = 128, percdamp: float = 0.01) -> SparsityPlan:
    """Prunes every layer of ``layout`` in place to its unit's sparsity or N:M level, with masks.

    Args:
        model: The dense model (no masks; :func:`restore` one that has them).
        layout: Its prunable layers.
        decisions: One sparsity or N:M level per unit (in ``layout.units`` order), or a :class:`SparsityPlan`.
        criterion: ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"``.
        stats: Calibration statistics (:func:`~amc.sparsity.calibrate.calibrate`; Hessians for SparseGPT).
        blocksize: SparseGPT's column block.
        percdamp: SparseGPT's dampening, as a fraction of the mean Hessian diagonal.

    Returns:
        The plan applied: each layer has exactly ``plan.removed(layer)`` masked weights.
    """
    if criterion not in criteria.CRITERIA:
        raise ConfigError(f"unknown sparsity criterion {criterion!r}; choose one of {criteria.CRITERIA}")
    plan = decisions if isinstance(decisions, SparsityPlan) else SparsityPlan.of(layout, decisions)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for layer in layout.layers:
            module = modules[layer.name]
            if prune.is_pruned(module):
                raise ConfigError(f"layer {layer.name!r} already has a pruning mask: restore(model, layout, dense) "
                                  "before pruning again")
            level = plan.levels.get(layer.name)
            count = None if level is not None else int(plan.counts.get(layer.name, 0))
            if (level is not None and level.dense) or count == 0:
                continue
            weight = weight_rows(module, layer)  # (out, in)
            entry = _stats_for(layer.name, criterion, stats)
            if criterion == "magnitude":
                keep = criteria.magnitude(weight, count=count, level=level)
            elif criterion == "wanda":
                keep = criteria.wanda(weight, entry.norms.to(weight.device), count=count, level=level)
            else:
                new, keep = criteria.sparsegpt(weight, entry.hessian, count=count, level=level,
                                               blocksize=blocksize, percdamp=percdamp)
                module.weight.copy_(to_stored(new, layer))
            prune.custom_from_mask(module, "weight", to_stored(keep.to(module.weight.dtype), layer))
    log.debug("sparsity %s applied to %d layers", criterion, len(layout.layers))
    return plan


def sparsify_sequential(model: nn.Module, layout: SparsityLayout,
                        decisions: Sequence[float] | Sequence[NM] | SparsityPlan, *, batches: Iterable[Tensor],
                        criterion: str = "sparsegpt", forward: Callable[[Tensor], object] | None = None,
                        blocksize: int = 128, percdamp: float = 0.01) -> SparsityPlan:
    """:func:`sparsify` block by block, as the SparseGPT and Wanda references run: each block's statistics are
    collected with the blocks before it already pruned, so it compensates for their errors too. Costs one
    calibration pass per block (``batches`` is read once per block: pass a list); a search instead calibrates
    once (:func:`~amc.sparsity.calibrate.calibrate`) and prunes every candidate with :func:`sparsify`.
    """
    plan = decisions if isinstance(decisions, SparsityPlan) else SparsityPlan.of(layout, decisions)
    batches = list(batches)
    blocks: dict[str, list[SparseLinear]] = {}
    for layer in layout.layers:
        blocks.setdefault(layer.block, []).append(layer)
    for members in blocks.values():
        part = SparsityLayout(tuple(members), (), layout.per)
        stats = None if criterion == "magnitude" else calibrate(model, part, batches, forward=forward,
                                                                hessian=criterion == "sparsegpt")
        sparsify(model, part, plan, criterion=criterion, stats=stats, blocksize=blocksize, percdamp=percdamp)
    return plan


def masked_per_layer(model: nn.Module, layout: SparsityLayout) -> dict[str, int]:
    """The number of masked (pruned) weights of each layer (0 where a layer has no mask)."""
    modules = dict(model.named_modules())
    return {x.name: int((modules[x.name].weight_mask == 0).sum()) if hasattr(modules[x.name], "weight_mask") else 0
            for x in layout.layers}
