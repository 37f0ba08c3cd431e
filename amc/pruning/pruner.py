"""Apply per-layer keep ratios to a copy of a model.

Structured (``granularity="channel"``): whole output channels of each decision's group are removed with
Torch-Pruning, so the model is physically smaller. Unstructured (``granularity="weight"``): individual
weights of each group's conv/linear layers are masked with ``torch.nn.utils.prune``; ``bake=True``
makes the zeros permanent and removes the masks.

Criteria (which channels or weights go first):

- ``l1`` / ``l2``: magnitude of the group's weights (AMC keeps the largest-L1 channels).
- ``random``: seeded random scores, the baseline every criterion must beat.
- ``taylor``: first-order Taylor expansion ``|w * dL/dw|`` (Molchanov et al., 2017); needs a
  calibration batch.
- ``apoz``: average percentage of zeros of the channel's post-ReLU activation (Hu et al., 2016),
  measured on a calibration batch; for weights, ``|w|`` scaled by its output channel's activity.
- ``obd``: Optimal Brain Damage (LeCun et al., 1990), saliency ``h * w^2 / 2`` with the Hessian's
  diagonal ``h`` approximated by the empirical Fisher (mean squared gradient over micro-batches of the
  calibration batch); channels sum their weights' saliencies (Torch-Pruning's grouped OBD).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn.utils import prune as tprune

from amc.choices import CRITERIA
from amc.graph.widths import GRANULARITIES, weights_kept
from amc.errors import ConfigError
from amc.graph.discover import LayerGraph

log = logging.getLogger(__name__)

_NEEDS_DATA = ("taylor", "apoz", "obd")
OBD_MICRO_BATCH = 8  # samples per gradient in the empirical Fisher


def check_criterion(criterion: str, granularity: str) -> None:
    """Raises :class:`ConfigError` for an unknown criterion or granularity."""
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown criterion {criterion!r}: use one of {CRITERIA}")
    if granularity not in GRANULARITIES:
        raise ConfigError(f"unknown granularity {granularity!r}: use one of {GRANULARITIES}")


def prune_model(
    model: nn.Module,
    graph: LayerGraph,
    keep: Sequence[float],
    *,
    criterion: str = "l1",
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
        criterion: One of :data:`CRITERIA`.
        granularity: ``"channel"`` (structured) or ``"weight"`` (unstructured).
        calibration: ``(inputs, labels)`` batch; required by ``taylor`` and ``apoz``.
        seed: Seed of the ``random`` criterion.
        bake: Unstructured only: make the masks permanent (plain zeroed weights).
        kept: Structured only: filled with, per decision, the indices of the base model's units it kept
            (what least-squares reconstruction needs to pair pruned and base outputs).

    Raises:
        ConfigError: Bad criterion, granularity, keep ratio, or a missing calibration batch.
    """
    check_criterion(criterion, granularity)
    channels = graph.channels(keep)  # validates every ratio
    if criterion in _NEEDS_DATA and calibration is None:
        raise ConfigError(f"criterion {criterion!r} needs a calibration batch: pass calibration=(inputs, labels)")
    pruned = copy.deepcopy(model).eval()
    scores = _data_scores(pruned, graph, criterion, calibration)
    generator = torch.Generator().manual_seed(seed)
    if granularity == "channel":
        _prune_channels(pruned, graph, channels, criterion, scores, generator, {} if kept is None else kept)
    else:
        _prune_weights(pruned, graph, keep, criterion, scores, generator, bake)
    pruned.zero_grad(set_to_none=True)
    return pruned


def _data_scores(model: nn.Module, graph: LayerGraph, criterion: str, calibration) -> dict[str, Tensor]:
    """Per-decision channel scores that need data (APoZ); gradients (Taylor) or Fisher diagonals (OBD)."""
    if criterion == "obd":
        _fisher_into_grad(model, *calibration)
        return {}
    if criterion == "taylor":
        inputs, labels = calibration
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), labels).backward()
        return {}
    if criterion != "apoz":
        return {}
    inputs, _ = calibration
    activity: dict[str, list[Tensor]] = {spec.name: [] for spec in graph.layers}
    handles = []
    for spec in graph.layers:
        if spec.pattern != "channel":
            raise ConfigError(f"criterion 'apoz' scores channels after a ReLU; decision {spec.name!r} prunes "
                              f"{spec.pattern}s: use l1, l2, taylor, obd or random")
        # Post-BN activations of members aligned with the decision's channels; else the layer output.
        probes = [n for n in spec.members if isinstance(model.get_submodule(n), nn.modules.batchnorm._BatchNorm)
                  and model.get_submodule(n).num_features == spec.out_channels] or [spec.name]
        for name in probes:
            channel_dim = -1 if isinstance(model.get_submodule(name), nn.Linear) else 1  # Linear: channels last

            def hook(module, args, out, key=spec.name, cdim=channel_dim):
                dims = [d for d in range(out.dim()) if d != cdim % out.dim()]
                activity[key].append((out > 0).float().mean(dim=dims))  # (C,) share of non-zeros
            handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.stack(acts).mean(0) for name, acts in activity.items()}


def _fisher_into_grad(model: nn.Module, inputs: Tensor, labels: Tensor) -> None:
    """Sets each parameter's ``.grad`` to its diagonal empirical Fisher: the mean of squared gradients of
    micro-batches (an estimate of the loss Hessian's diagonal that is never negative)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fisher = [torch.zeros_like(p) for p in params]
    chunks = list(zip(inputs.split(OBD_MICRO_BATCH), labels.split(OBD_MICRO_BATCH)))
    for x, y in chunks:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        for f, p in zip(fisher, params):
            if p.grad is not None:
                f += p.grad.detach().pow(2)
    for f, p in zip(fisher, params):
        p.grad = f / len(chunks)


def _channel_scores(group, criterion: str, n: int, scores: Tensor | None, generator) -> Tensor:
    if criterion == "random":
        return torch.rand(n, generator=generator)
    if criterion == "apoz":
        return scores
    if criterion == "taylor":
        imp = tp.importance.GroupTaylorImportance()
    elif criterion == "obd":
        imp = tp.importance.GroupHessianImportance()  # w^2 * .grad, and .grad holds the Fisher diagonal
    else:
        imp = tp.importance.GroupMagnitudeImportance(p=1 if criterion == "l1" else 2)
    values = imp(group)
    if values is None:  # no weight in the group that the importance can score
        raise ConfigError(f"criterion {criterion!r} cannot score this group; use 'l1' or 'random'")
    return values


def _prune_channels(model, graph, channels, criterion, scores, generator, kept: dict[str, list[int]]) -> None:
    example = torch.zeros(1, *graph.input_shape, device=next(model.parameters()).device)
    dg = tp.DependencyGraph().build_dependency(model, example, verbose=False)
    for spec, n_keep in zip(graph.layers, channels):
        kept[spec.name] = list(range(spec.out_channels))
        if n_keep == spec.out_channels:
            continue
        module = model.get_submodule(spec.name)
        if spec.pattern == "head":  # Torch-Pruning's head group: rooted at proj's inputs
            root, prune_fn = module.proj, dg.get_pruner_of_module(module.proj).prune_in_channels
        else:
            root, prune_fn = module, dg.get_pruner_of_module(module).prune_out_channels
        width = spec.out_channels * spec.unit
        full = dg.get_pruning_group(root, prune_fn, list(range(width)))
        values = _unit_scores(spec, full, criterion, scores.get(spec.name), generator)
        # Stable sort: equal scores are removed lowest index first, so results are reproducible.
        drop = sorted(torch.sort(values.detach().cpu(), stable=True).indices[: spec.out_channels - n_keep].tolist())
        kept[spec.name] = sorted(set(kept[spec.name]) - set(drop))
        dg.get_pruning_group(root, prune_fn, _unit_indices(spec, drop)).prune()
        if spec.pattern == "head":
            module.num_heads -= len(drop)
            assert module.num_heads == n_keep, (spec.name, n_keep)
        else:
            assert dg.get_out_channels(root) == n_keep * spec.unit, (spec.name, n_keep)


def _unit_scores(spec, group, criterion: str, scores: Tensor | None, generator) -> Tensor:
    """One score per unit: a channel, a head (the mean over its channels) or the same channel of every
    group (the mean over the groups, as Torch-Pruning ranks grouped layers)."""
    if spec.pattern == "channel":
        return _channel_scores(group, criterion, spec.out_channels, scores, generator)
    if criterion == "random":
        return torch.rand(spec.out_channels, generator=generator)
    values = _channel_scores(group, criterion, spec.out_channels * spec.unit, scores, generator)
    if spec.pattern == "head":
        return values.view(spec.out_channels, spec.unit).mean(1)  # (heads,)
    return values.view(spec.unit, spec.out_channels).mean(0)  # (channels per group,)


def _unit_indices(spec, units: list[int]) -> list[int]:
    """Channel indices (in the root's index space) of the units to remove."""
    if spec.pattern == "head":  # heads are contiguous blocks of head_dim channels
        return [u * spec.unit + j for u in units for j in range(spec.unit)]
    if spec.pattern == "group":  # groups are contiguous blocks; unit u is offset u in every group
        return sorted(g * spec.out_channels + u for g in range(spec.unit) for u in units)
    return units


def _prune_weights(model, graph, keep, criterion, scores, generator, bake) -> None:
    for spec, ratio in zip(graph.layers, keep):
        for name in spec.members:
            module = model.get_submodule(name)
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue  # norms, attention matmuls: nothing to sparsify
            weight = module.weight  # (out, in/groups, kh, kw) or (out, in)
            amount = weight.numel() - weights_kept(ratio, weight.numel())
            if criterion == "random":
                importance = torch.rand(weight.shape, generator=generator).to(weight.device)
            elif criterion == "taylor":
                importance = (weight * weight.grad).abs()
            elif criterion == "obd":
                importance = 0.5 * weight.grad * weight.pow(2)
            elif criterion == "apoz":
                activity = scores[spec.name]
                importance = weight.abs() * activity.view(-1, *([1] * (weight.dim() - 1)))
            else:
                importance = weight.abs() if criterion == "l1" else weight.pow(2)
            # Weights already zero go first whatever the criterion scores them (iterative pruning keeps
            # its earlier zeros); l1_unstructured compares absolute scores.
            importance = torch.where(weight == 0, torch.zeros_like(importance), importance.abs() + 1e-12)
            tprune.l1_unstructured(module, "weight", amount=amount, importance_scores=importance.detach())
            if bake:
                tprune.remove(module, "weight")
