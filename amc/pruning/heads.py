"""Where a decision's units live in Torch-Pruning's dependency graph: the group root, its pruning function,
the channel indices of a unit, and what a module must update after units are removed.

Plain channels are rooted at the layer's own output channels. Attention heads (``pattern == "head"``) are
rooted at the output projection's inputs (Torch-Pruning's head group), each head a contiguous block of
``head_dim`` channels, and the attention module's head count is updated after pruning. Grouped units
(``pattern == "group"``) sit at the same offset in every group.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def group_root(spec: Any, module: nn.Module, dg: Any) -> tuple[nn.Module, Any]:
    """The module and Torch-Pruning pruning function that root the group of decision ``spec``."""
    if spec.pattern == "head":  # Torch-Pruning's head group: rooted at proj's inputs
        return module.proj, dg.get_pruner_of_module(module.proj).prune_in_channels
    return module, dg.get_pruner_of_module(module).prune_out_channels


def unit_indices(spec: Any, units: list[int]) -> list[int]:
    """Channel indices (in the root's index space) of the units to remove."""
    if spec.pattern == "head":  # heads are contiguous blocks of head_dim channels
        return [u * spec.unit + j for u in units for j in range(spec.unit)]
    if spec.pattern == "group":  # groups are contiguous blocks; unit u is offset u in every group
        return sorted(g * spec.out_channels + u for g in range(spec.unit) for u in units)
    return units


def after_prune(spec: Any, module: nn.Module, dropped: int) -> None:
    """Updates what Torch-Pruning does not: an attention module's head count after ``dropped`` heads went."""
    if spec.pattern == "head":
        module.num_heads -= dropped


def kept_units(spec: Any, root: nn.Module, module: nn.Module, dg: Any) -> int:
    """Units the decision keeps now (checked after pruning)."""
    if spec.pattern == "head":
        return module.num_heads
    return dg.get_out_channels(root) // spec.unit
