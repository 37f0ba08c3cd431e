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
- ``head``: whole heads of an attention module (timm's fused ``qkv``, or Hugging Face's separate q/k/v
  Linears, whole key/value groups under grouped-query attention: :mod:`amc.graph.attention`), rooted at
  the output projection's inputs; the attention matmuls (explicit or ``F.scaled_dot_product_attention``)
  are costed as FlopCounterMode counts them (see :mod:`amc.graph.probe`);
- ``group``: a group that reaches a grouped conv or a GroupNorm loses the same channels in every group,
  so each group keeps the same width; the decision counts channels per group.

Not decisions, keeping their width (with a warning naming each and why, listed in
``LayerGraph.skipped``): the classifier's output layer, and any group that touches a parameterised
module whose cost is not modelled (``nn.MultiheadAttention``, an LSTM, ...) or that maps channels
unevenly onto a grouped layer, or whose trial pruning on a copy breaks the model or its predicted cost
(:mod:`amc.graph.verify`). A model that cannot be traced, that shuffles channels, that computes FLOPs the
cost model cannot follow, or whose discovery outlasts its time budget (:mod:`amc.graph.budget`) is refused
with one :class:`UnsupportedModelError` line; so is any other failure while discovering.
"""

from __future__ import annotations

import logging
import time

import torch
import torch_pruning as tp
from torch import nn

from amc.errors import AmcError, ConfigError, UnsupportedModelError
from amc.graph.attention import find_attentions, rewire
from amc.graph.budget import DEFAULT_SECONDS, Overtime, time_budget
from amc.graph.build import build_graph
from amc.graph.caches import release_caches
from amc.graph.groups import Decision, channel_decision, heads_decision, module_type
from amc.graph.probe import probe
from amc.graph.verify import failing_decisions
from amc.graph.records import (
    LayerGraph,
    LayerSpec,
    ModuleRecord,
    SkippedLayer,
    fingerprint,
)

log = logging.getLogger(__name__)

_TRUSTED = ("torch.nn.", "amc.models.")  # module types whose every decision the test suite prunes for real

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
            out = output[0] if isinstance(output, tuple) else output  # nn.MultiheadAttention: (output, weights)
            shapes[module] = (tuple(args[0].shape), tuple(out.shape))

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
    names = {m: q for q, m in model.named_modules()}
    found = [f"{names.get(m, '?')!r} ({type(m).__name__}, {n} calls)" for m, n in calls.items() if n > 1]
    reused = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    if reused:
        raise UnsupportedModelError(
            f"the model calls {reused} more than once per forward pass; shared layers cannot be pruned or "
            "costed exactly: give each use its own module"
        )
    return order, shapes


def discover(model: nn.Module, example_input: torch.Tensor, *, round_to: int = 1,
             time_budget_s: float | None = DEFAULT_SECONDS, verify: bool | None = None) -> LayerGraph:
    """Finds the prunable decisions of ``model`` in forward order.

    Args:
        model: The base model (left unchanged; it is put in eval mode for tracing).
        example_input: One batch shaped like the model's input, e.g. ``(1, C, H, W)``.
        round_to: Unit counts (channels, heads, channels per group) are rounded up to a multiple of
            this (AMC uses 8).
        time_budget_s: Seconds discovery may take before it stops with a one-line refusal (None: no limit).
        verify: Try the decisions on a pruned copy (:mod:`amc.graph.verify`) and leave those whose pruned
            model fails or costs other than predicted at full width, with the reason. None: only for models
            with a module from outside ``torch.nn`` and this project's models (timm, Hugging Face, yours).

    Returns:
        A :class:`LayerGraph`.

    Raises:
        UnsupportedModelError: The model has no prunable layer, cannot be traced, shuffles channels,
            computes FLOPs that the cost model cannot follow when channels are pruned, or takes longer
            than ``time_budget_s`` to discover; always one line.
    """
    if round_to < 1:
        raise ConfigError(f"round_to must be a positive integer, got {round_to!r}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ConfigError(f"discovery time budget must be a positive number of seconds or None, got {time_budget_s!r}")
    where = ["tracing the model"]
    start = time.monotonic()
    try:
        with time_budget(time_budget_s):
            return _discover(model, example_input, round_to, where, verify)
    except Overtime:
        raise UnsupportedModelError(
            f"discovery of {type(model).__name__} stopped after {time.monotonic() - start:.0f} s (its time budget "
            f"is {time_budget_s:g} s) while {where[0]}; pass a larger --discovery-budget (seconds) to wait longer"
        ) from None
    except AmcError:
        raise
    except Exception as exc:  # whatever a user's model does to the tracers: one line, not a traceback
        text = " ".join(str(exc).split())[:300]
        raise UnsupportedModelError(
            f"discovery of {type(model).__name__} failed while {where[0]} ({type(exc).__name__}: {text}); "
            "such models are not supported"
        ) from exc


def _discover(model: nn.Module, example_input: torch.Tensor, round_to: int, where: list[str],
              verify: bool) -> LayerGraph:
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
        where[0] = "building Torch-Pruning's dependency graph"
        try:
            dg = tp.DependencyGraph().build_dependency(model, example_input, verbose=False)
        except Exception as exc:  # Torch-Pruning's tracer fails on some graphs (ZeroDivisionError, ...)
            raise UnsupportedModelError(
                f"Torch-Pruning cannot trace {type(model).__name__} ({type(exc).__name__}: {exc}); "
                "such models are not supported"
            ) from exc
    finally:
        model.train(was_training)
        release_caches(model)  # what tracing with gradients left in caches would stop copy.deepcopy
    names = {module: name for name, module in model.named_modules()}
    param_names = {id(p): name for name, p in model.named_parameters()}
    types = {module: module_type(module) for module in order}
    attentions = find_attentions(model)
    for parts in attentions.values():
        if not parts.fused and all(m in dg.module2node for m in (*parts.projections, parts.proj)):
            rewire(dg, parts)  # before any group walks through their reshapes and rotary embeddings

    output_modules = {m for m in order if m in dg.module2node and _feeds_output(dg, m)}
    # Modules computing FLOPs of their own that no record describes: widths inside them must not change.
    # (For an attention module: the widths of its q/k/v, which its matmuls read.)
    projections = {parts.module: set(parts.projections) for parts in attentions.values()}
    # (The model itself is not one: its own FLOPs refuse it with a hint when the records are built.)
    opaque = {m: projections.get(m, set(m.modules()) - {m}) for m in seen.own_flops
              if m is not model and module_type(m) not in ("conv", "linear", "depthwise", "grouped", "mha")}
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
        where[0] = f"grouping the channels of {names[root]!r} ({type(root).__name__}) in Torch-Pruning"
        if parts is not None:
            covered.update(parts.projections)  # k and v are never roots of their own
            decision = heads_decision(dg, parts, names, param_names, types, output_modules)
        else:
            decision = channel_decision(dg, root, names, param_names, types, output_modules)
        covered.update(t for (t, is_out) in decision.counts if is_out and isinstance(t, nn.Module))
        if not decision.problem:
            decision.problem = _inside_opaque(decision, opaque, names)
        if decision.problem:
            if not decision.is_output:
                skipped.append(SkippedLayer(names[root] if parts is None else names[parts.owner],
                                            type(root).__name__ if parts is None else type(parts.owner).__name__,
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
    where[0] = "building the layer records"
    if verify is None:
        verify = any(not type(m).__module__.startswith(_TRUSTED) for m in model.modules())
    graph = build_graph(model, example_input, order, shapes, types, names, decisions, round_to, seen,
                        attentions, tuple(skipped), verify)
    if not verify:
        return graph
    failing = failing_decisions(model, example_input, graph, progress=lambda what: where.__setitem__(0, what))
    if not failing:
        return graph
    dropped = [SkippedLayer(decisions[i].name, type(decisions[i].root).__name__, why) for i, why in failing.items()]
    log.warning("%d decision(s) keep their width: %s", len(dropped), "; ".join(map(str, dropped)))
    decisions = [d for i, d in enumerate(decisions) if i not in failing]
    if not decisions:
        raise UnsupportedModelError(f"found no prunable layer in {type(model).__name__}: {dropped[0]}")
    where[0] = "building the layer records"
    return build_graph(model, example_input, order, shapes, types, names, decisions, round_to, seen,
                       attentions, (*skipped, *dropped), verify)


def _inside_opaque(decision: Decision, opaque: dict, names: dict) -> str | None:
    """Why ``decision`` cannot be one: it cuts outputs of a layer inside a module that computes FLOPs of its own
    on them (other than the attention module whose heads it prunes); None when it does not."""
    own = decision.attention.module if decision.attention is not None else None
    for (target, is_out) in decision.counts:
        if not is_out or not isinstance(target, nn.Module):
            continue
        for module, inside in opaque.items():
            if module is not own and target in inside:
                return (f"it changes the width of {names.get(target)!r} inside {type(module).__name__} "
                        f"{names.get(module) or '<model>'!r}, whose own FLOPs the cost model does not follow")
    return None


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
