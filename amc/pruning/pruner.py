"""Apply per-layer keep ratios to a copy of a model.

Structured (``granularity="channel"``): whole output channels of each decision's group are removed with
Torch-Pruning, so the model is physically smaller. Unstructured (``granularity="weight"``): individual
weights of each group's conv/linear layers are masked with ``torch.nn.utils.prune``; ``bake=True``
makes the zeros permanent and removes the masks.

Which channels or weights go first is a :class:`~amc.pruning.criteria.Criterion` (l1, l2, random, taylor,
apoz, obd: see :mod:`amc.pruning.criteria`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn.utils import prune as tprune

from amc.errors import ConfigError
from amc.graph.discover import LayerGraph
from amc.graph.widths import GRANULARITIES, weights_kept
from amc.pruning.criteria import Criterion, Statistics, parse_criterion
from amc.pruning.heads import after_prune, group_root, kept_units, unit_indices

log = logging.getLogger(__name__)


def check_criterion(criterion: str | Criterion, granularity: str) -> Criterion:
    """The parsed criterion, after checking ``granularity``.

    Raises:
        ConfigError: An unknown criterion or granularity.
    """
    parsed = parse_criterion(criterion)
    if granularity not in GRANULARITIES:
        raise ConfigError(f"unknown granularity {granularity!r}: use one of {GRANULARITIES}")
    return parsed


def prune_model(
    model: nn.Module,
    graph: LayerGraph,
    keep: Sequence[float],
    *,
    criterion: str | Criterion = "l1",
    granularity: str = "channel",
    calibration: tuple[Tensor, Tensor] | None = None,
    seed: int = 0,
    bake: bool = True,
    kept: dict[str, list[int]] | None = None,
) -> nn.Module:
    """Returns a pruned copy of ``model``; the original is not modified.

    Args:
        model: The base model that ``graph`` was discovered on.
        graph: Its :class:`~amc.graph.discover.LayerGraph`.
        keep: One keep ratio in (0, 1] per decision, in ``graph`` order.
        criterion: A :class:`~amc.pruning.criteria.Criterion` or its name (see
            :func:`~amc.pruning.criteria.criterion_names`).
        granularity: ``"channel"`` (structured) or ``"weight"`` (unstructured).
        calibration: ``(inputs, labels)`` batch; required by criteria that need data (taylor, apoz, obd).
        seed: Seed of the ``random`` criterion.
        bake: Unstructured only: make the masks permanent (plain zeroed weights).
        kept: Structured only: filled with, per decision, the indices of the base model's units it kept
            (what least-squares reconstruction needs to pair pruned and base outputs).

    Raises:
        ConfigError: Bad criterion, granularity, keep ratio, or a missing calibration batch.
    """
    criterion = check_criterion(criterion, granularity)
    channels = graph.channels(keep)  # validates every ratio
    if criterion.needs_data and calibration is None:
        raise ConfigError(f"criterion {criterion.name!r} needs a calibration batch: pass calibration=(inputs, labels)")
    pruned = copy.deepcopy(model).eval()
    stats = criterion.prepare(pruned, graph, calibration)
    generator = torch.Generator().manual_seed(seed)
    if granularity == "channel":
        _prune_channels(pruned, graph, channels, criterion, stats, generator, {} if kept is None else kept)
    else:
        _prune_weights(pruned, graph, keep, criterion, stats, generator, bake)
    pruned.zero_grad(set_to_none=True)
    return pruned


def _prune_channels(model: nn.Module, graph: LayerGraph, channels: list[int], criterion: Criterion, stats: Statistics,
                    generator: torch.Generator, kept: dict[str, list[int]]) -> None:
    example = torch.zeros(1, *graph.input_shape, device=next(model.parameters()).device)
    dg = tp.DependencyGraph().build_dependency(model, example, verbose=False)
    for spec, n_keep in zip(graph.layers, channels):
        kept[spec.name] = list(range(spec.out_channels))
        if n_keep == spec.out_channels:
            continue
        module = model.get_submodule(spec.name)
        root, prune_fn = group_root(spec, module, dg)
        width = spec.out_channels * spec.unit
        full = dg.get_pruning_group(root, prune_fn, list(range(width)))
        values = criterion.unit_scores(spec, full, stats.get(spec.name), generator)
        # Stable sort: equal scores are removed lowest index first, so results are reproducible.
        drop = sorted(torch.sort(values.detach().cpu(), stable=True).indices[: spec.out_channels - n_keep].tolist())
        kept[spec.name] = sorted(set(kept[spec.name]) - set(drop))
        dg.get_pruning_group(root, prune_fn, unit_indices(spec, drop)).prune()
        after_prune(spec, module, len(drop))
        assert kept_units(spec, root, module, dg) == n_keep, (spec.name, n_keep)


def _prune_weights(model: nn.Module, graph: LayerGraph, keep: Sequence[float], criterion: Criterion,
                   stats: Statistics, generator: torch.Generator, bake: bool) -> None:
    for spec, ratio in zip(graph.layers, keep):
        for name in spec.members:
            module = model.get_submodule(name)
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue  # norms, attention matmuls: nothing to sparsify
            weight = module.weight  # (out, in/groups, kh, kw) or (out, in)
            amount = weight.numel() - weights_kept(ratio, weight.numel())
            importance = criterion.weight_scores(weight, stats.get(spec.name), generator)
            # Weights already zero go first whatever the criterion scores them (iterative pruning keeps
            # its earlier zeros); l1_unstructured compares absolute scores.
            importance = torch.where(weight == 0, torch.zeros_like(importance), importance.abs() + 1e-12)
            tprune.l1_unstructured(module, "weight", amount=amount, importance_scores=importance.detach())
            if bake:
                tprune.remove(module, "weight")
