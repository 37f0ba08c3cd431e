"""Re-apply a saved policy: rebuild the search's context, prune, evaluate, export.

The policy's ``meta.context`` records the model, data split, seed and evaluation settings of the
search, so applying it reproduces the recorded validation accuracy exactly (same pruned channels,
same BatchNorm recalibration batches, the same dropped blocks for a ``--depth`` policy). Any of them can be
overridden.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from amc.context import Context, ContextConfig, build_context
from amc.cost.analytic import make_cost_model
from amc.evaluation.evaluator import EvalConfig
from amc.errors import ConfigError, PolicyError
from amc.pruning.export import export_onnx, export_pt2
from amc.cost.latency import LatencyConfig
from amc.pruning.depth import DepthCost, drop_blocks, outermost
from amc.pruning.policy import Policy
from amc.evaluation.metrics import accuracy
from amc.graph.records import fingerprint
from amc.seeding import seeded
from amc.train import TrainConfig, train

log = logging.getLogger(__name__)


EXPORT_FORMATS = ("pt2", "onnx")
POLICY_FILE = "policy.json"  # what a run folder holds (scripts/search.py writes it)


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
    cost_ratio: float  # of the resource the policy was searched under (a latency table's prediction for latency)
    exported: dict[str, Path]
    finetuned_val_accuracy: float | None = None
    finetuned_test_accuracy: float | None = None

    @property
    def resource(self) -> str:
        """What ``cost_ratio`` is a ratio of."""
        return self.policy.resource


def context_config_of(policy: Policy, **overrides: Any) -> ContextConfig:
    """The :class:`ContextConfig` the policy was searched with, with ``overrides`` (None values ignored).

    The device is where this process runs, not part of what was searched: it is ``overrides["device"]``
    or the CPU, whatever the search ran on (a policy searched on a GPU applies on a CPU-only machine).
    """
    saved = dict(policy.meta.get("context") or {})
    saved.pop("device", None)
    eval_saved = dict(saved.pop("eval", None) or {})
    train_saved = dict(saved.pop("train", None) or {})
    latency_saved = dict(saved.pop("latency", None) or {})
    fields = {f.name for f in dataclasses.fields(ContextConfig)}
    values = {k: v for k, v in saved.items() if k in fields}
    for name in ("model_kwargs", "dataset_kwargs"):
        values[name] = tuple(tuple(kv) for kv in values.get(name, ()))
    values.update({k: v for k, v in overrides.items() if v is not None})
    if policy.dropped:  # its blocks are found (and checked) as the search found them
        values["depth"] = True
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
    # Timing settings matter only to latency policies (a CUDA one must still apply on a CPU-only machine).
    values["latency"] = LatencyConfig(**latency_values) if values.get("resource") == "latency" else LatencyConfig()
    return ContextConfig(**values)


def policy_file(path: str | os.PathLike) -> Path:
    """The ``policy.json`` that ``path`` names: the file itself, or the one in a run folder.

    Raises:
        PolicyError: ``path`` is a folder without a ``policy.json``.
    """
    path = Path(path)
    if not path.is_dir():
        return path  # a missing file is reported by Policy.load, naming it
    inside = path / POLICY_FILE
    if not inside.is_file():
        raise PolicyError(f"{str(inside)!r} does not exist: pass a run folder of scripts/search.py (it holds "
                          f"{POLICY_FILE}) or the policy file itself")
    return inside


def check_model(policy: Policy, config: ContextConfig) -> None:
    """Refuses a policy of another model before anything costly: the model ``config`` describes is built
    untrained (its fingerprint is of names and shapes only), so no base model is trained, loaded or cached.

    Raises:
        PolicyError: The fingerprints differ (the message names both and the fix).
    """
    if not policy.model_fingerprint:
        return
    from amc.data.datasets import load_dataset
    from amc.models import build_model

    data = load_dataset(config.dataset, root=config.data_dir, seed=config.seed, val_size=config.val_size,
                        train_limit=config.train_limit, kwargs=dict(config.dataset_kwargs),
                        workers=config.loader_workers)
    with torch.random.fork_rng(devices=[]):  # initial weights draw from the global generator: leave it alone
        model = build_model(config.model, in_channels=data.input_shape[0], num_classes=data.num_classes,
                            input_size=data.input_shape[1:], **dict(config.model_kwargs)).eval()
    try:  # as discovery fingerprints it: after a forward pass (lazy modules take their shapes then)
        with torch.no_grad():
            model(data.example(1))
    except Exception as exc:  # noqa: BLE001 (a model discovery refuses: build_context says why, with the fix)
        log.debug("no early model check: a forward pass of the untrained model failed (%s)", exc)
        return
    built = fingerprint(model)
    if built != policy.model_fingerprint:
        raise PolicyError(f"policy is for model fingerprint {policy.model_fingerprint!r} but {config.model!r} on "
                          f"{config.dataset!r} is {built!r}: apply it to the model (and --model/--dataset) it was "
                          "searched on")


def _freeze_zeros(model: nn.Module) -> list[nn.Module]:
    """Masks every pruned (zero) weight so fine-tuning cannot regrow it (unstructured pruning)."""
    masked = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, (nn.Conv2d, nn.Linear)) and weight is not None and bool((weight == 0).any()):
            prune.custom_from_mask(module, "weight", mask=(weight != 0))
            masked.append(module)
    return masked


SCHEDULES = ("oneshot", "iterative")
RAMPS = ("linear", "agp")


def schedule_keeps(final: Sequence[float], steps: int, ramp: str = "linear") -> list[list[float]]:
    """Keep ratios after each of ``steps`` rounds, the last one ``final``.

    ``linear`` removes the same share in every round; ``agp`` is Zhu & Gupta's (2017) automated gradual
    pruning, cubic: ``1 - (1 - keep) * (1 - (1 - i / steps) ** 3)``, most of the pruning early.
    """
    if ramp not in RAMPS:
        raise ConfigError(f"unknown --ramp {ramp!r}: use one of {RAMPS}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--steps must be a positive integer, got {steps!r}")
    rounds = []
    for i in range(1, steps + 1):
        done = i / steps if ramp == "linear" else 1 - (1 - i / steps) ** 3
        rounds.append([1 - (1 - k) * done for k in final])
    rounds[-1] = [float(k) for k in final]
    return rounds


def _epochs_per_round(total: int, steps: int) -> list[int]:
    """``total`` epochs over ``steps`` rounds, the remainder going to the last rounds."""
    return [total // steps + (1 if i >= steps - total % steps else 0) for i in range(steps)]


def _iterative(ctx: Context, policy: Policy, *, steps: int, ramp: str, epochs: int, config: TrainConfig,
               distill: bool, progress: bool) -> nn.Module:
    """Reaches ``policy`` in ``steps`` prune / fine-tune rounds, ``epochs`` epochs in all."""
    from amc.graph.discover import discover
    from amc.pruning.pruner import prune_model

    evaluator = ctx.evaluator
    example = ctx.example(1).to(ctx.device)
    current = ctx.model
    target = policy.ratios(ctx.graph)
    for i, (keeps, round_epochs) in enumerate(zip(schedule_keeps(target, steps, ramp),
                                                  _epochs_per_round(epochs, steps))):
        if policy.granularity == "weight":  # sparsity relative to the whole tensor; zeros go first
            current = prune_model(current, ctx.graph, keeps, criterion=policy.criterion, granularity="weight",
                                  calibration=evaluator.calibration, seed=ctx.config.seed)
        else:  # channel counts relative to the base model, cut from the current (smaller) model
            wanted = ctx.graph.channels(keeps)
            graph = discover(current, example)
            if graph.names != ctx.graph.names:
                raise ConfigError("iterative pruning lost track of the model's layers after round "
                                  f"{i}: use --schedule oneshot for this model")
            relative = [w / spec.out_channels for w, spec in zip(wanted, graph)]
            current = prune_model(current, graph, relative, criterion=policy.criterion,
                                  calibration=evaluator.calibration, seed=ctx.config.seed)
            assert discover(current, example).channels([1.0] * len(graph)) == tuple(wanted)
            if policy.dropped and i == steps - 1:  # the last round drops the blocks, then fine-tunes the rest
                drop_blocks(current, policy.dropped, inplace=True)
        evaluator.recalibrate(current)
        log.info("round %d/%d: keep %s, %d epoch(s)", i + 1, steps, [round(k, 3) for k in keeps], round_epochs)
        if round_epochs:
            masked = _freeze_zeros(current) if policy.granularity == "weight" else []
            with seeded(ctx.config.seed + i, ctx.device):  # dropout draws: the round's seed, not the caller's
                train(current, ctx.data.train, dataclasses.replace(config, epochs=round_epochs),
                      seed=ctx.config.seed + i, teacher=ctx.model if distill else None, progress=progress,
                      description=f"round {i + 1}/{steps}")
            for module in masked:
                prune.remove(module, "weight")
    return current.eval()


def apply_policy(policy: Policy | str | os.PathLike, *, out: str | os.PathLike | None = None,
                 export: bool | tuple[str, ...] = True, progress: bool = True, finetune_epochs: int = 0,
                 finetune_lr: float = 0.01, distill: bool = False, schedule: str = "oneshot", steps: int = 1,
                 ramp: str = "linear", **overrides: Any) -> AppliedPolicy:
    """Rebuilds the base model, prunes it with ``policy``, evaluates, optionally fine-tunes, exports.

    Args:
        policy: A :class:`Policy`, the path of a ``policy.json``, or a run folder holding one.
        out: Folder of the exported files (``pruned.pt2``, ``pruned.onnx``).
        export: True (``pt2``), False, or a tuple of :data:`EXPORT_FORMATS`.
        finetune_epochs: Epochs of SGD with a cosine schedule on the training split after pruning.
        finetune_lr: Initial learning rate of fine-tuning.
        distill: Fine-tune with knowledge distillation from the base model (Hinton et al., 2015).
        schedule: ``"oneshot"`` (prune, then fine-tune) or ``"iterative"``: reach the policy in ``steps``
            prune / fine-tune rounds (``ramp`` ``linear`` or ``agp``), ``finetune_epochs`` in all.
            ``val_accuracy``/``test_accuracy`` stay the one-shot numbers (what the search measured).
        **overrides: :class:`ContextConfig` fields replacing those recorded in the policy.

    Raises:
        PolicyError: The policy is malformed, missing, or belongs to another model (fingerprint mismatch,
            found before any training).
        ConfigError: An unknown export format or a negative epoch count.
    """
    formats = ("pt2",) if export is True else () if export is False else tuple(export)
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown:
        raise ConfigError(f"unknown export format(s) {unknown}: use {EXPORT_FORMATS}")
    if finetune_epochs < 0:
        raise ConfigError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown --schedule {schedule!r}: use one of {SCHEDULES}")
    schedule_keeps([1.0], steps, ramp)  # validates steps and ramp
    if schedule == "iterative" and finetune_epochs < steps:
        raise ConfigError(f"--schedule iterative needs --finetune-epochs >= --steps (one epoch per round at "
                          f"least), got {finetune_epochs} epochs for {steps} steps")
    if not isinstance(policy, Policy):
        policy = Policy.load(policy_file(policy))
    config = context_config_of(policy, **overrides)
    check_model(policy, config)  # before any training, checkpoint loading or caching
    ctx = build_context(config, progress=progress)
    ratios = policy.ratios(ctx.graph)  # refuses a foreign model
    pruned = ctx.evaluator.scored_model(policy)  # as the search's score measured it (refitted by reconstruct)
    val = ctx.evaluator.evaluate(policy).accuracy
    test = accuracy(pruned, ctx.data.test)
    if policy.resource == "latency":  # the policy's own latency table (cached where it was searched)
        cost = ctx.cost_model("latency", progress=progress)
    else:
        cost = make_cost_model(policy.resource, ctx.graph, granularity=policy.granularity)
        if policy.dropped:  # ratios names them: the cost of the width-pruned model without those blocks
            outermost(ctx.blocks, policy.dropped)  # a name that is no removable block: a one-line error
            cost = DepthCost(cost, ctx.blocks)
    tuned_val = tuned_test = None
    config = TrainConfig(epochs=max(1, finetune_epochs), lr=finetune_lr, schedule="cosine",
                         batch_size=ctx.config.train.batch_size, shift=ctx.config.train.shift)
    if schedule == "iterative":
        pruned = _iterative(ctx, policy, steps=steps, ramp=ramp, epochs=finetune_epochs, config=config,
                            distill=distill, progress=progress)
        tuned_val, tuned_test = accuracy(pruned, ctx.data.val), accuracy(pruned, ctx.data.test)
    elif finetune_epochs:
        masked = _freeze_zeros(pruned) if policy.granularity == "weight" else []
        with seeded(ctx.config.seed, ctx.device):  # dropout draws: the policy's seed, not the caller's
            train(pruned, ctx.data.train, config, seed=ctx.config.seed, teacher=ctx.model if distill else None,
                  progress=progress, description="fine-tuning")
        for module in masked:  # bake the masks again: the zeros stayed zero through fine-tuning
            prune.remove(module, "weight")
        tuned_val, tuned_test = accuracy(pruned, ctx.data.val), accuracy(pruned, ctx.data.test)
    exported: dict[str, Path] = {}
    if formats and out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        example = ctx.example(2)
        if "pt2" in formats:
            exported["pt2"] = export_pt2(pruned, example, Path(out) / "pruned.pt2")
        if "onnx" in formats:
            exported["onnx"] = export_onnx(pruned, example, Path(out) / "pruned.onnx")
    return AppliedPolicy(policy, ctx, pruned.eval(), val, test, cost.ratio(ratios), exported, tuned_val, tuned_test)
