"""``reconstruct`` on a transformer: its linears see (N, tokens, C), so the kept output channels are the last
dimension, not dimension 1 (a ViT search with the default score crashed with an IndexError)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from amc.context import ContextConfig, build_context
from amc.evaluation.evaluator import EvalConfig, PolicyEvaluator
from amc.train import TrainConfig


def test_reconstruct_scores_vit_policies_on_both_paths(tmp_path) -> None:
    ctx = build_context(ContextConfig(model="vit", cache_dir=str(tmp_path), train=TrainConfig(epochs=1),
                                      eval=EvalConfig(score="reconstruct", val_limit=64)), progress=False)
    rng = np.random.default_rng(0)
    old = PolicyEvaluator(ctx.model, ctx.graph, ctx.data, dataclasses.replace(ctx.config.eval, reuse_base=False))
    for _ in range(3):
        keep = rng.uniform(0.3, 1.0, len(ctx.graph)).tolist()
        new_result, old_result = ctx.evaluator.evaluate(keep), old.evaluate(keep)
        assert math.isfinite(new_result.accuracy) and 0.0 <= new_result.accuracy <= 1.0
        assert abs(new_result.accuracy - old_result.accuracy) <= 1e-6  # the one-pass refit is the old refit
