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
from torch.nn.utils import prune

from amc.context import Context, ContextConfig, build_context
from amc.cost import make_cost_model
from amc.evaluate import EvalConfig
from amc.errors import ConfigError
from amc.export import export_onnx, export_pt2
from amc.latency import LatencyConfig
from amc.policy import Policy
from amc.train import TrainConfig, accuracy, train


EXPORT_FORMATS = ("pt2", "onnx")


@dataclass(frozen=True)
class AppliedPolicy:
    """A policy applied to its base model.

    ``val_accuracy``/``test_accuracy`` are measured right after pruning and BatchNorm recalibration (what
    the search measured); ``finetuned_*`` after fine-tuning, when it was asked for.
    """

    policy: Policy
    context: Context
    model: nn.Module  # pruned (and fine-tuned, if asked), in eval mode
    val_accuracy: float
    test_accuracy: float
    cost_ratio: float
    exported: dict[str, Path]
    finetuned_val_accuracy: float | None = None
    finetuned_test_accuracy: float | None = None


def context_config_of(policy: Policy, **overrides: Any) -> ContextConfig:
    """The :class:`ContextConfig` the policy was searched with, with ``overrides`` (None values ignored)."""
    saved = dict(policy.meta.get("context") or {})
    eval_saved = dict(saved.pop("eval", None) or {})
    train_saved = dict(saved.pop("train", None) or {})
    latency_saved = dict(saved.pop("latency", None) or {})
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
    latency_fields = {f.name for f in dataclasses.fields(LatencyConfig)}
    latency_values = {k: v for k, v in latency_saved.items() if k in latency_fields}
    if "calibration_keeps" in latency_values:
        latency_values["calibration_keeps"] = tuple(latency_values["calibration_keeps"])
    values["latency"] = LatencyConfig(**latency_values)
    return ContextConfig(**values)


def _freeze_zeros(model: nn.Module) -> list[nn.Module]:
    """Masks every pruned (zero) weight so fine-tuning cannot regrow it (unstructured pruning)."""
    masked = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, (nn.Conv2d, nn.Linear)) and weight is not None and bool((weight == 0).any()):
            prune.custom_from_mask(module, "weight", mask=(weight != 0))
            masked.append(module)
    return masked


def apply_policy(policy: Policy | str | os.PathLike, *, out: str | os.PathLike | None = None,
                 export: bool | tuple[str, ...] = True, progress: bool = True, finetune_epochs: int = 0,
                 finetune_lr: float = 0.01, distill: bool = False, **overrides: Any) -> AppliedPolicy:
    """Rebuilds the base model, prunes it with ``policy``, evaluates, optionally fine-tunes, exports.

    Args:
        policy: A :class:`Policy` or the path of a ``policy.json``.
        out: Folder of the exported files (``pruned.pt2``, ``pruned.onnx``).
        export: True (``pt2``), False, or a tuple of :data:`EXPORT_FORMATS`.
        finetune_epochs: Epochs of SGD with a cosine schedule on the training split after pruning.
        finetune_lr: Initial learning rate of fine-tuning.
        distill: Fine-tune with knowledge distillation from the base model (Hinton et al., 2015).
        **overrides: :class:`ContextConfig` fields replacing those recorded in the policy.

    Raises:
        PolicyError: The policy is malformed or belongs to another model (fingerprint mismatch).
        ConfigError: An unknown export format or a negative epoch count.
    """
    formats = ("pt2",) if export is True else () if export is False else tuple(export)
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown:
        raise ConfigError(f"unknown export format(s) {unknown}: use {EXPORT_FORMATS}")
    if finetune_epochs < 0:
        raise ConfigError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    if not isinstance(policy, Policy):
        policy = Policy.load(policy)
    ctx = build_context(context_config_of(policy, **overrides), progress=progress)
    ratios = policy.ratios(ctx.graph)  # refuses a foreign model
    pruned = ctx.evaluator.prune(policy)
    val = ctx.evaluator.evaluate(policy).accuracy
    test = accuracy(pruned, ctx.data.test)
    cost = make_cost_model(policy.resource if policy.resource in ("flops", "params") else "flops", ctx.graph,
                           granularity=policy.granularity)
    tuned_val = tuned_test = None
    if finetune_epochs:
        config = TrainConfig(epochs=finetune_epochs, lr=finetune_lr, schedule="cosine",
                             batch_size=ctx.config.train.batch_size, shift=ctx.config.train.shift)
        masked = _freeze_zeros(pruned) if policy.granularity == "weight" else []
        train(pruned, ctx.data.train, config, seed=ctx.config.seed, teacher=ctx.model if distill else None,
              progress=progress, description="fine-tuning")
        for module in masked:  # bake the masks again: the zeros stayed zero through fine-tuning
            prune.remove(module, "weight")
        tuned_val, tuned_test = accuracy(pruned, ctx.data.val), accuracy(pruned, ctx.data.test)
    exported: dict[str, Path] = {}
    if formats and out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        example = ctx.data.val.tensors[0][:2]
        if "pt2" in formats:
            exported["pt2"] = export_pt2(pruned, example, Path(out) / "pruned.pt2")
        if "onnx" in formats:
            exported["onnx"] = export_onnx(pruned, example, Path(out) / "pruned.onnx")
    return AppliedPolicy(policy, ctx, pruned.eval(), val, test, cost.ratio(ratios), exported, tuned_val, tuned_test)
