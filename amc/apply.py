"""Re-apply a saved policy: rebuild the search's context, prune, evaluate, export.

The policy's ``meta.context`` records the model, data split, seed and evaluation settings of the
search, so applying it reproduces the recorded validation accuracy exactly (same pruned channels,
same BatchNorm recalibration batches). Any of them can be overridden.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from amc.context import Context, ContextConfig, build_context
from amc.cost import make_cost_model
from amc.evaluate import EvalConfig
from amc.export import export_pt2
from amc.policy import Policy
from amc.train import TrainConfig, accuracy


@dataclass(frozen=True)
class AppliedPolicy:
    """A policy applied to its base model."""

    policy: Policy
    context: Context
    model: nn.Module  # pruned, BatchNorm recalibrated
    val_accuracy: float
    test_accuracy: float
    cost_ratio: float
    exported: Path | None


def context_config_of(policy: Policy, **overrides: Any) -> ContextConfig:
    """The :class:`ContextConfig` the policy was searched with, with ``overrides`` (None values ignored)."""
    saved = dict(policy.meta.get("context") or {})
    eval_saved = dict(saved.pop("eval", None) or {})
    train_saved = dict(saved.pop("train", None) or {})
    fields = {f.name for f in dataclasses.fields(ContextConfig)}
    values = {k: v for k, v in saved.items() if k in fields}
    values["model_kwargs"] = tuple(tuple(kv) for kv in values.get("model_kwargs", ()))
    values.update({k: v for k, v in overrides.items() if v is not None})
    eval_fields = {f.name for f in dataclasses.fields(EvalConfig)}
    eval_values = {k: v for k, v in eval_saved.items() if k in eval_fields}
    eval_values.update(criterion=policy.criterion, granularity=policy.granularity)
    values["eval"] = EvalConfig(**eval_values)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values["train"] = TrainConfig(**{k: v for k, v in train_saved.items() if k in train_fields})
    return ContextConfig(**values)


def apply_policy(policy: Policy | str | os.PathLike, *, out: str | os.PathLike | None = None,
                 export: bool = True, progress: bool = True, **overrides: Any) -> AppliedPolicy:
    """Rebuilds the base model, prunes it with ``policy``, evaluates it and exports ``pruned.pt2``.

    Raises:
        PolicyError: The policy is malformed or belongs to another model (fingerprint mismatch).
    """
    if not isinstance(policy, Policy):
        policy = Policy.load(policy)
    ctx = build_context(context_config_of(policy, **overrides), progress=progress)
    ratios = policy.ratios(ctx.graph)  # refuses a foreign model
    pruned = ctx.evaluator.prune(policy)
    val = ctx.evaluator.evaluate(policy).accuracy
    test = accuracy(pruned, ctx.data.test)
    cost = make_cost_model(policy.resource if policy.resource in ("flops", "params") else "flops", ctx.graph,
                           granularity=policy.granularity)
    exported = None
    if export and out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        exported = export_pt2(pruned, ctx.data.val.tensors[0][:2], Path(out) / "pruned.pt2")
    return AppliedPolicy(policy, ctx, pruned, val, test, cost.ratio(ratios), exported)
