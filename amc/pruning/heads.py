"""Where a decision's units live in Torch-Pruning's dependency graph: the group root, its pruning function,
the channel indices of a unit, and what a module must update after units are removed.

Plain channels are rooted at the layer's own output channels. Attention heads (``pattern == "head"``) are
rooted at the output projection's inputs (Torch-Pruning's head group), each unit a contiguous block of
channels (one head, or under grouped-query attention one key/value head's query heads), and the attention
module's head counts are updated after pruning. Separate q/k/v projections (Hugging Face) are first rewired
in the graph (:func:`amc.graph.attention.rewire`). Grouped units (``pattern == "group"``) sit at the same
offset in every group.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import nn

from amc.graph.attention import AttentionParts, attention_parts, find_attentions, rewire, set_heads
from amc.graph.caches import release_caches

_PARTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # attention module -> its parts before pruning


def _parts(module: nn.Module) -> AttentionParts:
    parts = _PARTS.get(module)
    if parts is None:
        parts = _PARTS[module] = attention_parts(module)
    return parts


def _rewire_all(dg: Any) -> None:
    if getattr(dg, "_amc_rewired_all", False):
        return
    release_caches(dg.model)  # caches the trace filled: non-leaf (no deepcopy) and about to have stale widths
    for parts in find_attentions(dg.model).values():
        if not parts.fused and all(m in dg.module2node for m in (*parts.projections, parts.proj)):
            rewire(dg, parts)
    dg._amc_rewired_all = True


def group_root(spec: Any, module: nn.Module, dg: Any) -> tuple[nn.Module, Any]:
    """The module and Torch-Pruning pruning function that root the group of decision ``spec``."""
    _rewire_all(dg)  # before any group walks into a separate q/k/v attention's reshapes
    if spec.pattern == "head":  # Torch-Pruning's head group: rooted at the output projection's inputs
        _PARTS.pop(module, None)
        proj = _parts(module).proj
        return proj, dg.get_pruner_of_module(proj).prune_in_channels
    return module, dg.get_pruner_of_module(module).prune_out_channels


def unit_indices(spec: Any, units: list[int]) -> list[int]:
    """Channel indices (in the root's index space) of the units to remove."""
    if spec.pattern == "head":  # heads (or key/value groups) are contiguous blocks of channels
        return [u * spec.unit + j for u in units for j in range(spec.unit)]
    if spec.pattern == "group":  # groups are contiguous blocks; unit u is offset u in every group
        return sorted(g * spec.out_channels + u for g in range(spec.unit) for u in units)
    return units


def after_prune(spec: Any, module: nn.Module, dropped: int) -> None:
    """Updates what Torch-Pruning does not: an attention module's head counts after ``dropped`` units went."""
    if spec.pattern != "head":
        return
    parts = _parts(module)
    if parts.fused:
        set_heads(module, parts.num_heads - dropped, parts.num_heads - dropped, parts.head_dim)
        return
    group = parts.num_heads // parts.num_kv_heads
    kv = parts.num_kv_heads - dropped
    set_heads(parts.module, kv * group, kv, parts.head_dim)
    if parts.owner is not parts.module:
        set_heads(parts.owner, kv * group, kv, parts.head_dim)


def kept_units(spec: Any, root: nn.Module, module: nn.Module, dg: Any) -> int:
    """Units the decision keeps now (checked after pruning)."""
    if spec.pattern == "head":
        parts = _parts(module)
        return module.num_heads if parts.fused else parts.proj.in_features // spec.unit
    return dg.get_out_channels(root) // spec.unit
