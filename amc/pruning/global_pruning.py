"""Torch-Pruning's global pruning as keep ratios: what a Torch-Pruning user gets at a budget, in our decisions.

Two recipes, both Torch-Pruning's own, with ``GroupMagnitudeImportance``, the graph's ``round_to`` and every
Conv/Linear layer outside the graph's decisions (the classifier) ignored:

- Channels (CNNs): ``MetaPruner(..., global_pruning=True, pruning_ratio=1.0, iterative_steps=steps)`` with
  L2 magnitude, stepped until the cost meets the budget (the package's ``progressive_pruning`` recipe; one
  step at a bisected ratio does not work: with global ranking the cost is not monotone in the ratio).
- Heads (attention models; Torch-Pruning's ``examples/transformers/prune_timm_vit.py``): whole heads
  (``num_heads``, ``prune_num_heads=True``, ``prune_head_dims=False``), L1 magnitude, one ratio for the
  channels and ``head_pruning_ratio`` (the example's default local ranking), one ``step()``; the ratio is
  bisected so the cost just meets the budget (a uniform ratio makes the cost monotone in it).

The cost is any function of the keep vector (``ratio_of``): FLOPs, params or a latency table, since the
cost models are exact functions of it. The result is read back from Torch-Pruning's pruned copy, one keep
ratio per decision (units kept / base units), and checked to give exactly those units under the graph's
rounding rule (:meth:`~amc.graph.records.LayerGraph.channels`). A model Torch-Pruning cannot handle gives
``None`` and a warning saying why, never an exception: a search then goes on without this baseline.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from amc.cost.analytic import make_cost_model
from amc.graph.attention import set_heads
from amc.graph.budget import Overtime, time_budget
from amc.graph.probe import attention_parts
from amc.graph.records import LayerGraph
from amc.graph.widths import rounded_channels
from amc.pruning.heads import group_root, kept_units

log = logging.getLogger(__name__)
# Torch-Pruning's graph walks can run for many minutes (a tiny Llama's grouped-query heads: 15+); a baseline
# that takes longer than this is no baseline.
TIME_BUDGET_S = 120.0

RatioOf = Callable[[Sequence[float]], float]


@dataclass(frozen=True)
class GlobalPruningResult:
    """Torch-Pruning's pruned model at a budget, and the same widths as the graph's keep ratios.

    Attributes:
        keep: One keep ratio per decision, in graph order: units kept / base units; ``graph.channels(keep)``
            is exactly :attr:`units`.
        units: Units (channels or heads) Torch-Pruning kept, per decision.
        ratio: ``ratio_of(keep)``: the cost as a fraction of the base model's.
        steps: Pruner steps taken (channels) or models pruned by the bisection (heads).
        recipe: ``"channels"`` (global magnitude pruning) or ``"heads"`` (the ViT head recipe).
        pruning_ratio: The heads recipe's bisected ratio (None for channels).
        model: Torch-Pruning's own pruned copy (eval mode); the base model is untouched.
    """

    keep: tuple[float, ...]
    units: tuple[int, ...]
    ratio: float
    steps: int
    recipe: str
    pruning_ratio: float | None = None
    model: nn.Module | None = field(default=None, compare=False, repr=False)


class _Unsupported(Exception):
    """Torch-Pruning's result cannot be used (said in the message); becomes a warning and None."""


def global_pruning(model: nn.Module, graph: LayerGraph, example: Tensor, *, budget: float, ratio_of: RatioOf,
                   min_keep: float = 0.2, p: int | None = None, steps: int = 200,
                   iterations: int = 14, seconds: float | None = TIME_BUDGET_S) -> GlobalPruningResult | None:
    """Torch-Pruning's global pruning of ``model``, stopped where ``ratio_of(keep) <= budget``.

    Args:
        model: The base model ``graph`` was discovered on (not modified).
        graph: Its layer graph: the decisions, in the order of the returned keep ratios, and ``round_to``.
        example: An example input batch (moved to the model's device).
        budget: Fraction of the base cost the pruned model may keep.
        ratio_of: The cost of a keep vector as a fraction of the base cost (e.g. ``cost_model.ratio``).
        min_keep: No decision keeps fewer than this fraction of its units (rounded up by ``round_to``).
        p: Norm of the magnitude importance (None: 2 for channels, 1 for heads, as Torch-Pruning's recipes).
        steps: Iterative steps of the channels recipe (each prunes about 1/steps of the channels).
        iterations: Bisection steps of the heads recipe.
        seconds: Time budget (None: none). Torch-Pruning's graph walks can run for many minutes on some
            models (a tiny Llama's grouped-query heads); past it there is no baseline, with a warning.

    Returns:
        The result, or None (with a warning naming why) where Torch-Pruning cannot prune the model or
        cannot reach the budget with ``min_keep``.
    """
    heads = any(spec.pattern == "head" for spec in graph.layers)
    whole = tuple(1.0 for _ in graph.layers)
    if ratio_of(whole) <= budget + 1e-12:  # nothing to prune
        units = tuple(spec.out_channels for spec in graph.layers)
        return GlobalPruningResult(keep=whole, units=units, ratio=float(ratio_of(whole)), steps=0,
                                   recipe="heads" if heads else "channels", model=copy.deepcopy(model).eval())
    started = time.monotonic()
    try:
        example = example.to(next(model.parameters()).device)
        with time_budget(seconds):
            if heads:
                result = _heads(model, graph, example, budget=budget, ratio_of=ratio_of, min_keep=min_keep,
                                p=1 if p is None else p, iterations=iterations)
            else:
                result = _channels(model, graph, example, budget=budget, ratio_of=ratio_of, min_keep=min_keep,
                                   p=2 if p is None else p, steps=steps)
    except Overtime:
        log.warning("Torch-Pruning's global pruning gives no baseline for %s: it did not finish within its time "
                    "budget (%.0f s)", type(model).__name__, time.monotonic() - started)
        return None
    except _Unsupported as exc:
        log.warning("Torch-Pruning's global pruning gives no baseline for %s: %s", type(model).__name__, exc)
        return None
    except Exception as exc:  # Torch-Pruning fails in many ways on models it cannot trace or group
        log.warning("Torch-Pruning's global pruning gives no baseline for %s: Torch-Pruning failed with %s: %s",
                    type(model).__name__, type(exc).__name__, exc)
        return None
    log.info("Torch-Pruning %s recipe at budget %g: cost ratio %.4f after %d %s", result.recipe, budget,
             result.ratio, result.steps, "steps" if result.recipe == "channels" else "pruned models")
    return result


def _pruner(pruned: nn.Module, graph: LayerGraph, example: Tensor, *, p: int, **kwargs):
    import torch_pruning as tp

    members = {name for spec in graph.layers for name in spec.members}
    ignored = [m for name, m in pruned.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and name not in members]
    round_to = graph.round_to if graph.round_to > 1 else None
    with warnings.catch_warnings():  # bare parameters (class token, position embedding): its default is ours too
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        return tp.pruner.MetaPruner(pruned, example, importance=tp.importance.GroupMagnitudeImportance(p=p),
                                    round_to=round_to, ignored_layers=ignored, **kwargs)


def _channels(model: nn.Module, graph: LayerGraph, example: Tensor, *, budget: float, ratio_of: RatioOf,
              min_keep: float, p: int, steps: int) -> GlobalPruningResult:
    """Global magnitude pruning, stepped until the cost meets the budget.

    No decision keeps fewer than ``min_keep`` of its units (rounded up to ``round_to``). Torch-Pruning's
    ``max_pruning_ratio`` alone does not ensure that: it is checked before a step, so one global step can
    cut a layer still above it far below it, and ``round_to`` then rounds the kept channels down (a
    32-channel conv kept 4 at ``min_keep`` 0.2). So each step runs in Torch-Pruning's interactive mode and
    a group's indices are trimmed to its floor, sparing its most important channels, before it is pruned.
    """
    pruned = copy.deepcopy(model).eval()
    pruner = _pruner(pruned, graph, example, p=p, global_pruning=True, pruning_ratio=1.0, iterative_steps=steps,
                     max_pruning_ratio=1 - min_keep)
    keep, ratio = None, float("nan")
    with torch.no_grad():
        for step in range(1, steps + 1):
            for group in pruner.step(interactive=True):
                idxs = _respect_min_keep(pruner, group, min_keep=min_keep, round_to=graph.round_to)
                if idxs:
                    group.prune(idxs=idxs)
            units, keep = _read_units(pruned, graph, pruner.DG)
            ratio = float(ratio_of(keep))
            if ratio <= budget + 1e-12:
                _check(pruned, graph, units, keep)
                return GlobalPruningResult(keep=keep, units=units, ratio=ratio, steps=step, recipe="channels",
                                           model=pruned.eval())
    raise _Unsupported(f"it cannot reach budget {budget:g}: with no decision below min_keep {min_keep:g} the "
                       f"model keeps {ratio:.4f} of its cost after {steps} steps; use a larger budget or a lower "
                       "min_keep")


def _respect_min_keep(pruner, group, *, min_keep: float, round_to: int) -> list[int]:
    """The group's pruning indices, trimmed so its root keeps >= ``min_keep`` of its initial channels.

    The floor is the graph's rounding of ``min_keep`` (:func:`~amc.graph.widths.rounded_channels`); the
    indices pruned are the least important of those proposed.
    """
    dep, idxs = group[0]
    module, handler = dep.target.module, dep.handler
    if pruner.DG.is_out_channel_pruning_fn(handler):
        current, initial = pruner.DG.get_out_channels(module), pruner.layer_init_out_ch[module]
    else:
        current, initial = pruner.DG.get_in_channels(module), pruner.layer_init_in_ch[module]
    floor = min(current, rounded_channels(min_keep, initial, round_to))
    allowed = current - floor
    idxs = list(idxs)
    if len(idxs) <= allowed:
        return idxs
    if allowed <= 0:
        return []
    importance = pruner.estimate_importance(pruner.DG.get_pruning_group(module, handler, list(range(current))))
    return sorted(sorted(idxs, key=lambda i: float(importance[i]))[:allowed])


def _heads(model: nn.Module, graph: LayerGraph, example: Tensor, *, budget: float, ratio_of: RatioOf,
           min_keep: float, p: int, iterations: int) -> GlobalPruningResult:
    """Torch-Pruning's ViT recipe (whole heads, one ratio), the ratio bisected to the budget.

    Torch-Pruning rounds the kept units down (4 heads at ratio 0.8 keep none), so a ratio that leaves any
    decision below ``min_keep`` counts as too large: the answer is the smallest ratio within the budget
    among those that respect ``min_keep``.
    """
    def prune_at(r: float) -> tuple[nn.Module, tuple[int, ...], tuple[float, ...]]:
        pruned = copy.deepcopy(model).eval()
        parts = [a for a in map(attention_parts, pruned.modules()) if a is not None]
        pruner = _pruner(pruned, graph, example, p=p, global_pruning=False, pruning_ratio=r,
                         num_heads={a.qkv: a.num_heads for a in parts}, prune_num_heads=True,
                         prune_head_dims=False, head_pruning_ratio=r)
        with torch.no_grad():
            pruner.step()
        for a in parts:  # Torch-Pruning counts the heads; the module's forward reads its own attributes
            heads = pruner.num_heads[a.qkv]
            set_heads(a.module, heads, heads, a.head_dim)  # num_heads, and timm's attn_dim with it
        units, keep = _read_units(pruned, graph, pruner.DG)
        return pruned, units, keep

    lo, hi = 0.0, 1.0 - min_keep
    best = None
    for _ in range(iterations):
        mid = (lo + hi) / 2
        pruned, units, keep = prune_at(mid)
        floor_ok = all(k >= min_keep - 1e-9 for k in keep)
        ratio = float(ratio_of(keep)) if floor_ok else float("inf")
        if floor_ok and ratio <= budget + 1e-12:
            hi, best = mid, (pruned, units, keep, ratio, mid)
        elif floor_ok:
            lo = mid
        else:
            hi = mid
    if best is None:
        raise _Unsupported(f"it cannot reach budget {budget:g}: with no decision below min_keep {min_keep:g} its "
                           "head recipe keeps more of the cost; use a larger budget or a lower min_keep")
    pruned, units, keep, ratio, r = best
    _check(pruned, graph, units, keep)
    return GlobalPruningResult(keep=keep, units=units, ratio=ratio, steps=iterations, recipe="heads",
                               pruning_ratio=r, model=pruned.eval())


def _read_units(pruned: nn.Module, graph: LayerGraph, dg) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Units each decision keeps in Torch-Pruning's model, and the keep ratios they are of the base."""
    units = []
    for spec in graph.layers:
        module = pruned.get_submodule(spec.name)
        root, _ = group_root(spec, module, dg)
        units.append(int(kept_units(spec, root, module, dg)))
    return tuple(units), tuple(u / spec.out_channels for u, spec in zip(units, graph.layers))


def _check(pruned: nn.Module, graph: LayerGraph, units: tuple[int, ...],
           keep: tuple[float, ...]) -> None:
    """Raises :class:`_Unsupported` unless ``keep`` reproduces Torch-Pruning's model in the graph's terms."""
    if any(u < 1 for u in units):
        raise _Unsupported(f"it removed every unit of a decision (units {list(units)})")
    rounded = graph.channels(keep)
    if tuple(rounded) != units:
        raise _Unsupported(f"the units it kept {list(units)} are not widths the graph's rounding (round_to "
                           f"{graph.round_to}) gives; use round_to 1")
    params = sum(t.numel() for t in pruned.parameters())
    expected = make_cost_model("params", graph).cost(list(keep))
    if params != round(expected):
        raise _Unsupported(f"it pruned parameters outside the graph's decisions ({params} parameters, the "
                           f"decisions' widths give {expected:.0f})")


__all__ = ["GlobalPruningResult", "global_pruning"]
