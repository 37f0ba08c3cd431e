"""Per-layer weight sparsity for decoder language models (issue 36).

- :mod:`amc.sparsity.layers`: the prunable linear layers (Llama, GPT-2's Conv1D, any module of linears) and
  one decision per transformer block or per layer.
- :mod:`amc.sparsity.calibrate`: input statistics from calibration tokens (Wanda norms, SparseGPT Hessians).
- :mod:`amc.sparsity.criteria`: magnitude, Wanda and SparseGPT inside a layer, unstructured or N:M.
- :mod:`amc.sparsity.budget`: the fraction of weights kept, projected exactly (unstructured) or by N:M levels.
- :mod:`amc.sparsity.owl`: OWL's outlier-weighted layer sparsities (the baseline beside uniform).
- :mod:`amc.sparsity.apply`: masks applied in place (``torch.nn.utils.prune``), restored, baked.
- :mod:`amc.sparsity.export`: a ``save_pretrained`` folder with the zeros baked in, and ONNX.
"""

from __future__ import annotations

from amc.sparsity.apply import (
    SparsityPlan,
    bake,
    dense_weights,
    masked_per_layer,
    restore,
    sparsify,
    sparsify_sequential,
)
from amc.sparsity.budget import SparsityBudget, layer_counts, layer_levels, nm_counts
from amc.sparsity.calibrate import LayerStats, calibrate
from amc.sparsity.criteria import CRITERIA, DENSE, NM, parse_level
from amc.sparsity.layers import (
    SparseLinear,
    SparsityLayout,
    SparsityUnit,
    discover_sparse,
    zeros_per_layer,
)
from amc.sparsity.owl import OWL_LAMBDA, OWL_M, outlier_ratios, owl, owl_sparsities

__all__ = [
    "CRITERIA", "DENSE", "NM", "OWL_LAMBDA", "OWL_M", "LayerStats", "SparseLinear", "SparsityBudget",
    "SparsityLayout", "SparsityPlan", "SparsityUnit", "bake", "calibrate", "dense_weights", "discover_sparse",
    "layer_counts", "layer_levels", "masked_per_layer", "nm_counts", "outlier_ratios", "owl", "owl_sparsities",
    "parse_level", "restore", "sparsify", "sparsify_sequential", "zeros_per_layer",
]
