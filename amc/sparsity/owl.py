"""OWL's layer ratios: units with more activation outliers keep more weights.

Yin et al., "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to High
Sparsity", ICML 2024 (luuyin/OWL, ``prune_wanda_outlier``). A unit's outlier ratio is the share of its Wanda
scores ``|W_ij| * ||x_j||`` (all its layers' together) above ``M`` times their mean. The ratios are scaled to
``[0, 2 * lambda]`` (min to max), centred, and subtracted from the target sparsity: sparsities span
``target +- lambda``, fewer where outliers are more. Published defaults: ``M = 5``, ``lambda = 0.08``. The
reference averages over blocks of equal size; here the result then goes through
:meth:`~amc.sparsity.budget.SparsityBudget.project`, so the size-weighted average is the target exactly
(the same values when units have equal sizes and none leaves the sparsity range).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from amc.errors import ConfigError
from amc.sparsity.budget import SparsityBudget
from amc.sparsity.calibrate import LayerStats
from amc.sparsity.layers import SparsityLayout, weight_rows

OWL_M = 5.0
OWL_LAMBDA = 0.08


def outlier_ratios(model: nn.Module, layout: SparsityLayout, stats: Mapping[str, LayerStats], *,
                   m: float = OWL_M) -> list[float]:
    """Each unit's share of Wanda scores above ``m`` times their mean (a fraction in [0, 1])."""
    if m <= 0:
        raise ConfigError(f"OWL's outlier threshold M must be positive, got {m!r}")
    modules = dict(model.named_modules())
    layers = {x.name: x for x in layout.layers}
    ratios = []
    with torch.no_grad():
        for unit in layout.units:
            scores = []
            for name in unit.members:
                if name not in stats:
                    raise ConfigError(f"no calibration statistics for layer {name!r}: calibrate the model first")
                weight = weight_rows(modules[name], layers[name]).float()
                scores.append((weight.abs() * stats[name].norms.to(weight.device).reshape(1, -1)).flatten())
            flat = torch.cat(scores)
            ratios.append(float((flat > flat.mean() * m).float().mean()))
    return ratios


def owl_sparsities(budget: SparsityBudget, ratios: list[float], *, lam: float = OWL_LAMBDA) -> list[float]:
    """OWL's unit sparsities from outlier ratios, projected to the budget's exact average."""
    if not 0 <= lam < 1:
        raise ConfigError(f"OWL's lambda must be in [0, 1), got {lam!r}")
    if len(ratios) != len(budget.layout.units):
        raise ConfigError(f"expected {len(budget.layout.units)} outlier ratios, got {len(ratios)}")
    low, high = min(ratios), max(ratios)
    if high == low:  # no unit stands out: OWL's scaling is undefined, and uniform is its limit
        return budget.uniform()
    scaled = [(r - low) / (high - low) * lam * 2 for r in ratios]
    mean = sum(scaled) / len(scaled)
    return budget.project([budget.target - (x - mean) for x in scaled])


def owl(model: nn.Module, budget: SparsityBudget, stats: Mapping[str, LayerStats], *, m: float = OWL_M,
        lam: float = OWL_LAMBDA) -> list[float]:
    """OWL's sparsity per unit of ``budget.layout`` for ``model`` (dense) with calibration ``stats``."""
    return owl_sparsities(budget, outlier_ratios(model, budget.layout, stats, m=m), lam=lam)
