"""Layer discovery: one pruning decision per group of channel-coupled layers.

Torch-Pruning's dependency graph tells which modules lose channels together when one layer's output
channels are removed (residual additions, concatenations, depthwise convs, flatten, LayerNorm,
GroupNorm and bare parameters such as a class token, a position embedding or a layer scale). Each
such group is one decision, a :class:`LayerSpec`. For every module the discovery also records, per
decision, how many of the module's input/output channels go with one unit of the decision (1 for a
plain connection, ``h*w`` through a flatten). The analytic cost models in :mod:`amc.cost.analytic` use these
records, so a predicted cost equals the pruned model's measured cost exactly.

Decisions come in three patterns:

- ``channel``: any set of output channels;
- ``head``: whole heads of a timm-style attention module (``num_heads``, fused ``qkv``, ``proj``),
  grouped as Torch-Pruning groups them for ``prune_num_heads`` (rooted at ``proj``'s inputs); the
  attention matmuls are costed as FlopCounterMode counts them (see :mod:`amc.graph.probe`);
- ``group``: a group that reaches a grouped conv or a GroupNorm loses the same channels in every group,
  so each group keeps the same width; the decision counts channels per group.

Not decisions, keeping their width (with a warning naming each and why, listed in
``LayerGraph.skipped``): the classifier's output layer, and any group that touches a parameterised
module whose cost is not modelled (``nn.MultiheadAttention``, an LSTM, ...) or that maps channels
unevenly onto a grouped layer. A model that cannot be traced, that shuffles channels, or that computes
FLOPs the cost model cannot follow is refused with one :class:`UnsupportedModelError` line.
"""

from __future__ import annotations

import logging

import torch
import torch_pruning as tp
from torch import nn

from amc.errors import ConfigError, UnsupportedModelError
from amc.graph.build import build_graph
from amc.graph.groups import Decision, channel_decision, heads_decision, module_type
from amc.graph.probe import attention_parts, probe
from amc.graph.records import (
    LayerGraph,
    LayerSpec,
    ModuleRecord,
    SkippedLayer,
    fingerprint,
)

log = logging.getLogger(__name__)

__all__ = ["LayerGraph", "LayerSpec", "ModuleRecord", "SkippedLayer", "discover", "fingerprint"]

def _forward_shapes(model: nn.Module, example: torch.Tensor) -> tuple[list[nn.Module], dict[nn.Module, tuple]]:
    """Runs one forward pass; returns modules in call order and each leaf's (input, output) shapes."""
    order: list[nn.Module] = []
    shapes: dict[nn.Module, tuple] = {}

    calls: dict[nn.Module, int] = {}

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        calls[module] = calls.get(module, 0) + 1
        if module not in shapes:
            order.append(module)
            shapes[module] = (tuple(args[0].shape), tuple(output.shape))

    handles = [m.register_forward_hook(hook) for m in model.modules() if module_type(m) is not None]
    try:
        with torch.no_grad():
            model(example)
    except Exception as exc:  # a user model that does not run is the user's to fix: say so in one line
        raise UnsupportedModelError(
            f"{type(model).__name__} fails on an input of shape {tuple(example.shape)} "
            f"({type(exc).__name__}: {exc}); check the model and the dataset's image size"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
    reused = [type(m).__name__ for m, n in calls.items() if n > 1]
    if reused:
        raise UnsupportedModelError(
            f"the model calls {reused} more than once per forward pass; shared layers cannot be pruned or "
            "costed exactly: give each use its own module"
        )
    return order, shapes


def discover(model: nn.Module, example_input: torch.Tensor, *, round_to: int = 1) -> LayerGraph:
    """Finds the prunable decisions of ``model`` in forward order.

    Args:
        model: The base model (left unchanged; it is put in eval mode for tracing).
        example_input: One batch shaped like the model's input, e.g. ``(1, C, H, W)``.
        round_to: Unit counts (channels, heads, channels per group) are rounded up to a multiple of
            this (AMC uses 8).

    Returns:
        A :class:`LayerGraph`.

    Raises:
        UnsupportedModelError: The model has no prunable layer, cannot be traced, shuffles channels, or
            computes FLOPs that the cost model cannot follow when channels are pruned.
    """
    if round_to < 1:
        raise ConfigError(f"round_to must be a positive integer, got {round_to!r}")
    was_training = model.training
    model.eval()
    try:
        order, shapes = _forward_shapes(model, example_input)
        seen = probe(model, example_input)
        if seen.shuffle is not None:
            name, kind = seen.shuffle
            raise UnsupportedModelError(
                f"channel shuffle in {name or '<model>'!r} ({kind}): Torch-Pruning maps channel indices "
                "straight through the view-transpose-reshape, so pruning would remove the wrong channels; "
                "such models (ShuffleNet) are not supported"
            )
        try:
            dg = tp.DependencyGraph().build_dependency(model, example_input, verbose=False)
        except Exception as exc:  # Torch-Pruning's tracer fails on some graphs (ZeroDivisionError, ...)
            raise UnsupportedModelError(
                f"Torch-Pruning cannot trace {type(model).__name__} ({type(exc).__name__}: {exc}); "
                "such models are not supported"
            ) from exc
    finally:
        model.train(was_training)
    names = {module: name for name, module in model.named_modules()}
    param_names = {id(p): name for name, p in model.named_parameters()}
    types = {module: module_type(module) for module in order}
    attentions = {parts.qkv: parts for m in model.modules() if (parts := attention_parts(m)) is not None}

    output_modules = {m for m in order if m in dg.module2node and _feeds_output(dg, m)}
    covered: set[nn.Module] = set()
    decisions: list[Decision] = []
    skipped: list[SkippedLayer] = []
    for root in order:
        if types[root] not in ("conv", "linear", "depthwise", "grouped") or root in covered:
            continue
        if root not in dg.module2node:
            skipped.append(SkippedLayer(names[root], type(root).__name__, "Torch-Pruning's graph does not reach it"))
            continue
        parts = attentions.get(root)
        if parts is not None:
            decision = heads_decision(dg, parts, names, param_names, types, output_modules)
        else:
            decision = channel_decision(dg, root, names, param_names, types, output_modules)
        covered.update(t for (t, is_out) in decision.counts if is_out and isinstance(t, nn.Module))
        if decision.problem:
            if not decision.is_output:
                skipped.append(SkippedLayer(names[root] if parts is None else names[parts.module],
                                            type(root).__name__ if parts is None else type(parts.module).__name__,
                                            decision.problem))
            log.debug("layer %s is not prunable: %s", names[root], decision.problem)
            continue
        decisions.append(decision)

    if not decisions:
        why = f"; {skipped[0]}" if skipped else ""
        raise UnsupportedModelError(
            f"found no prunable layer in {type(model).__name__}: it needs a Conv2d or Linear layer whose "
            f"output channels do not feed the model output directly{why}"
        )
    if skipped:
        log.warning("%d layer(s) keep their width: %s", len(skipped), "; ".join(map(str, skipped)))
    return build_graph(model, example_input, order, shapes, types, names, decisions, round_to, seen,
                       attentions, tuple(skipped))


def _feeds_output(dg, module: nn.Module) -> bool:
    """True when ``module``'s output channels reach the model output without a channel-mixing layer.

    Follows the graph through parameter-free ops (softmax, flatten, pooling, add) and channel-wise layers
    (batch norm, depthwise conv), so ``fc -> log_softmax`` still marks ``fc`` as the classifier.
    """
    stack, seen = [dg.module2node[module]], set()
    while stack:
        node = stack.pop()
        if not node.outputs:
            return True
        for nxt in node.outputs:
            if id(nxt) in seen:
                continue
            seen.add(id(nxt))
            if isinstance(nxt.module, nn.Module) and module_type(nxt.module) in ("conv", "linear", "grouped"):
                continue  # a channel-mixing layer consumes these channels: the output is its business
            stack.append(nxt)
    return False
