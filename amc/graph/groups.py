"""Decisions from Torch-Pruning's dependency groups: what one decision removes, in which units, and why
a group cannot be a decision.

A decision's group is asked of Torch-Pruning with every channel of its root removed; the number of
channels each member loses then, divided by the decision's units, is what one unit costs that member.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from amc.graph.attention import AttentionParts, rewire

_BN = nn.modules.batchnorm._BatchNorm
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


def module_type(module: nn.Module) -> str | None:
    """The record type of a module: conv, depthwise, grouped, linear, mha, bn, norm, embed; None when not modelled."""
    if isinstance(module, nn.Conv2d):
        if module.groups == 1:
            return "conv"
        if module.groups == module.in_channels == module.out_channels:
            return "depthwise"
        return "grouped"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.MultiheadAttention):
        return "mha"
    if isinstance(module, _BN):
        return "bn"
    if isinstance(module, _NORMS):
        return "norm"
    if isinstance(module, nn.Embedding):
        return "embed"
    return None


@dataclass(frozen=True)
class ParamRef:
    """A bare parameter (class token, position embedding, layer scale) that a group cuts along ``dim``."""

    name: str
    shape: tuple[int, ...]
    dim: int


@dataclass
class Decision:
    """One candidate decision: its root, what it removes and in which units, or why it cannot be one."""

    root: nn.Module  # the layer whose shape describes the decision (qkv for a head decision)
    name: str
    counts: dict = field(default_factory=dict)  # (module | ParamRef, is_out) -> channels for every unit
    n_units: int = 1
    unit: int = 1
    pattern: str = "channel"
    problem: str | None = None
    is_output: bool = False  # the problem is only that the layer produces the model output
    attention: AttentionParts | None = None


def channel_decision(dg, root: nn.Module, names: dict, param_names: dict, types: dict,
                     output_modules: set) -> Decision:
    """The decision rooted at ``root``'s output channels (``channel`` or ``group`` pattern)."""
    n = dg.get_out_channels(root)
    decision = Decision(root, names[root], n_units=n)
    try:
        group = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, list(range(n)))
    except Exception as exc:  # noqa: BLE001 - Torch-Pruning's index mapping fails on odd graphs
        decision.problem = f"Torch-Pruning cannot group its channels ({type(exc).__name__}: {exc})"
        return decision
    decision.counts = _counts(dg, group, param_names)
    _check(decision, n, names, types, output_modules)
    return decision


def heads_decision(dg, parts: AttentionParts, names: dict, param_names: dict, types: dict,
                   output_modules: set) -> Decision:
    """The decision over whole heads of ``parts`` (whole key/value groups under grouped-query attention):
    Torch-Pruning's head group, rooted at ``proj``'s inputs."""
    n = parts.proj.in_features
    decision = Decision(parts.root, names[parts.owner], n_units=parts.units, unit=parts.unit,
                        pattern="head", attention=parts)
    try:
        rewire(dg, parts)
        group = dg.get_pruning_group(parts.proj, dg.get_pruner_of_module(parts.proj).prune_in_channels,
                                     list(range(n)))
    except Exception as exc:  # noqa: BLE001
        decision.problem = f"Torch-Pruning cannot group its heads ({type(exc).__name__}: {exc})"
        return decision
    decision.counts = _counts(dg, group, param_names)
    if parts.fused:
        reached = decision.counts.get((parts.qkv, True)) == 3 * n
    else:
        kv = parts.k.out_features
        reached = [decision.counts.get((m, True)) for m in parts.projections] == [n, kv, kv]
    if not reached:
        what = names[parts.qkv] if parts.fused else ", ".join(names[m] for m in parts.projections)
        decision.problem = f"its heads do not reach {what!r} as q, k and v in Torch-Pruning's graph"
        return decision
    _check(decision, n, names, types, output_modules)
    if decision.pattern != "head" and decision.problem is None:
        decision.problem = "its heads reach a grouped conv or GroupNorm"
    return decision


def _counts(dg, group, param_names: dict) -> dict:
    dims = {id(p): dim for p, dim in dg.unwrapped_parameters}
    counts: dict = {}
    for item in group:
        target = item.dep.target.module
        if isinstance(target, nn.Parameter):
            key = (ParamRef(param_names.get(id(target), "?"), tuple(target.shape), dims.get(id(target), -1)), True)
        elif isinstance(target, nn.Module) and any(True for _ in target.parameters(recurse=False)):
            key = (target, dg.is_out_channel_pruning_fn(item.dep.handler))
        else:
            continue  # element-wise ops, concat, reshape: no parameters, no cost of their own
        counts[key] = max(counts.get(key, 0), len(item.idxs))
    return counts


def _check(decision: Decision, n: int, names: dict, types: dict, output_modules: set) -> None:
    """Sets ``decision.problem`` (and its units, for a group that reaches grouped layers)."""
    groups = set()
    for (target, is_out), count in decision.counts.items():
        if isinstance(target, ParamRef):
            if target.name == "?":
                decision.problem = "it cuts a parameter that is not one of the model's named parameters"
                return
            continue
        kind = types.get(target) or module_type(target)
        if kind is not None and target not in types:
            decision.problem = f"it touches {type(target).__name__} {names.get(target)!r}, which is not called as a module"
            return
        if kind is None:
            decision.problem = f"it touches {type(target).__name__} {names.get(target)!r}, whose cost is not modelled"
            return
        if kind == "mha" and not (target._qkv_same_embed_dim and target.in_proj_weight is not None
                                  and target.bias_k is None):
            decision.problem = f"it touches MultiheadAttention {names.get(target)!r} with its own kdim/vdim or bias_k"
            return
        if isinstance(target, nn.LayerNorm) and len(target.normalized_shape) > 1:
            decision.problem = f"it touches LayerNorm {names.get(target)!r} over {len(target.normalized_shape)} dims"
            return
        if is_out and target in output_modules:
            decision.problem = f"it removes outputs of {names.get(target)!r}, which produces the model output"
            decision.is_output = True
            return
        g = target.groups if kind == "grouped" else getattr(target, "num_groups", 1) if isinstance(
            target, nn.GroupNorm) else target.num_heads if kind == "mha" else 1
        if g > 1:
            if count != n:
                decision.problem = (f"its channels reach the grouped {type(target).__name__} {names.get(target)!r} "
                                    "through a concat, split or reshape, so its groups would not keep equal widths")
                return
            groups.add(g)
    if len(groups) > 1:
        decision.problem = f"it reaches grouped layers with different group counts {sorted(groups)}"
        return
    if groups:
        g = groups.pop()
        if decision.pattern == "head":
            decision.pattern = "head+group"  # refused by heads_decision
            return
        decision.pattern, decision.unit, decision.n_units = "group", g, n // g
    for (target, _), count in decision.counts.items():
        if count % decision.n_units:
            name = target.name if isinstance(target, ParamRef) else names.get(target)
            decision.problem = f"its {decision.n_units} units map unevenly onto {name!r} ({count} channels)"
            return
