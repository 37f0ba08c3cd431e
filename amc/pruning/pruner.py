"""Apply per-layer keep ratios to a copy of a model.

Structured (``granularity="channel"``): whole output channels of each decision's group are removed with
Torch-Pruning, so the model is physically smaller. Unstructured (``granularity="weight"``): individual
weights of each group's conv/linear layers are masked with ``torch.nn.utils.prune``; ``bake=True``
makes the zeros permanent and removes the masks.

Which channels or weights go first is a :class:`~amc.pruning.criteria.Criterion` (l1, l2, random, taylor,
apoz, obd: see :mod:`amc.pruning.criteria`).

:func:`prune_model` prunes one copy and does everything from scratch: the criterion's statistics, the
Torch-Pruning dependency graph (a traced forward pass). A search prunes hundreds of copies of the same
base model, so :class:`Pruner` does what depends on the base model only once: it measures the statistics
(and the gradients ``taylor`` and ``obd`` read) on an unpruned copy, traces the dependency graph once,
and makes each candidate by copying the model *with* its graph (one ``deepcopy`` of both, so the copy's
graph points at the copy's layers). The channels it removes are :func:`prune_model`'s (tested).
"""

from __future__ import annotations

import copy
import logging
import types
from collections.abc import Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn.utils import prune as tprune

from amc.errors import ConfigError
from amc.graph.caches import release_caches
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
    _check_calibration(criterion, calibration)
    pruned = copy.deepcopy(model).eval()
    stats = criterion.prepare(pruned, graph, calibration)
    generator = torch.Generator().manual_seed(seed)
    if granularity == "channel":
        _prune_channels(pruned, graph, channels, criterion, stats, generator, {} if kept is None else kept)
    else:
        _prune_weights(pruned, graph, keep, criterion, stats, generator, bake)
    pruned.zero_grad(set_to_none=True)
    return pruned


def _check_calibration(criterion: Criterion, calibration: tuple[Tensor, Tensor] | None) -> None:
    if criterion.needs_data and calibration is None:
        raise ConfigError(f"criterion {criterion.name!r} needs a calibration batch: pass calibration=(inputs, labels)")


class Pruner:
    """Prunes copies of one base model, doing the base-model work once (:func:`prune_model`, faster).

    The criterion's statistics and the gradients it reads (``taylor``, ``obd``) are measured on an unpruned
    copy of the base, as :func:`prune_model` measures them on each candidate before pruning it; the
    Torch-Pruning dependency graph is traced once on the base (hooks only; its weights, gradients and
    BatchNorm statistics stay as they are; the caches a model keeps outside its parameters, which the trace
    leaves unable to be copied, are emptied: :func:`~amc.graph.caches.release_caches`). Each :meth:`prune` deep-copies the base
    together with its graph (:func:`_copy_with_graph`; the pruning functions and autograd nodes are shared:
    the graph's handlers stay the registered ones the importances compare against), gives it the recorded
    gradients and prunes it.

    The base model must not change while the pruner is in use.

    Args:
        model: The base model that ``graph`` was discovered on (not modified).
        graph: Its :class:`~amc.graph.discover.LayerGraph`.
        criterion: A :class:`~amc.pruning.criteria.Criterion` or its name.
        granularity: ``"channel"`` or ``"weight"``.
        calibration: ``(inputs, labels)``, for the criteria that need data.
    """

    def __init__(self, model: nn.Module, graph: LayerGraph, *, criterion: str | Criterion = "l1",
                 granularity: str = "channel", calibration: tuple[Tensor, Tensor] | None = None) -> None:
        self.criterion = check_criterion(criterion, granularity)
        _check_calibration(self.criterion, calibration)
        self.graph = graph
        self.granularity = granularity
        probe = copy.deepcopy(model).eval()  # the criterion may set gradients: never on the base itself
        self._stats = self.criterion.prepare(probe, graph, calibration)
        self._grads = {name: p.grad for name, p in probe.named_parameters() if p.grad is not None}
        del probe
        # Copies are made from the base itself (one model in memory, not two); one in training mode is
        # copied once, so that tracing cannot move its BatchNorm statistics.
        self._template = copy.deepcopy(model).eval() if model.training else model
        self._dg = None
        self._memo: dict[int, Any] = {}
        if granularity == "channel":
            example = torch.zeros(1, *graph.input_shape, device=next(model.parameters()).device)
            self._dg = tp.DependencyGraph().build_dependency(self._template, example, verbose=False)
            release_caches(self._template)  # tensors the grad-enabled trace left in caches cannot be deep-copied
            self._memo = _shared_objects(self._dg)

    def prune(self, keep: Sequence[float], *, seed: int = 0, bake: bool = True,
              kept: dict[str, list[int]] | None = None) -> nn.Module:
        """The pruned copy for ``keep``: :func:`prune_model` with this pruner's settings."""
        channels = self.graph.channels(keep)  # validates every ratio
        pruned, dg = _copy_with_graph(self._template, self._dg, dict(self._memo))
        pruned.eval()
        for name, p in pruned.named_parameters():
            p.grad = self._grads.get(name)  # not modified: pruning replaces a parameter, with its gradient
        generator = torch.Generator().manual_seed(seed)
        if self.granularity == "channel":
            _prune_channels(pruned, self.graph, channels, self.criterion, self._stats, generator,
                            {} if kept is None else kept, dg=dg)
        else:
            _prune_weights(pruned, self.graph, keep, self.criterion, self._stats, generator, bake)
        pruned.zero_grad(set_to_none=True)
        return pruned


def _copy_with_graph(model: nn.Module, dg: Any, memo: dict[int, Any]) -> tuple[nn.Module, Any]:
    """A deep copy of ``model`` and of its dependency graph ``dg`` pointing at the copy's layers.

    The graph's nodes link to each other (inputs, outputs, dependencies): a plain ``deepcopy`` would
    recurse along those links as deep as the network (resnet56 overflows Python's stack). So every node is
    registered in the memo first, as a shallow copy, and then given deep copies of its attributes.
    """
    copied = copy.deepcopy(model, memo)
    if dg is None:
        return copied, None
    nodes = list(dg.module2node.values())
    fresh = [copy.copy(node) for node in nodes]
    for node, new in zip(nodes, fresh):
        memo[id(node)] = new
    for node, new in zip(nodes, fresh):
        new.__dict__ = copy.deepcopy(node.__dict__, memo)
    graph = copy.copy(dg)
    graph.__dict__ = copy.deepcopy(dg.__dict__, memo)
    return copied, graph


def _shared_objects(dg: Any) -> dict[int, Any]:
    """A ``deepcopy`` memo that keeps what a copied dependency graph must share with the traced one.

    The pruning functions stay the registered instances (group importances recognise a dependency by
    comparing its handler with them), the autograd nodes of the traced pass are read-only (and cannot be
    copied), and Python modules are not copied.
    """
    memo: dict[int, Any] = {}
    for pruner in [*dg.REGISTERED_PRUNERS.values(), *dg.CUSTOMIZED_PRUNERS.values()]:
        if pruner is not None:
            memo[id(pruner)] = pruner
    for node in dg.module2node.values():
        for grad_fn in (node.grad_fn, getattr(node.module, "grad_fn", None)):
            if grad_fn is not None:
                memo[id(grad_fn)] = grad_fn
    for value in vars(dg).values():
        if isinstance(value, types.ModuleType):
            memo[id(value)] = value
    return memo


def _prune_channels(model: nn.Module, graph: LayerGraph, channels: list[int], criterion: Criterion, stats: Statistics,
                    generator: torch.Generator, kept: dict[str, list[int]], dg: Any = None) -> None:
    if dg is None:
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
