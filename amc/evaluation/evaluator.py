"""Evaluation of a policy: prune a copy, recalibrate BatchNorm, measure validation accuracy.

Accuracy during search is measured on the validation split (carved from the training set), after
re-estimating BatchNorm statistics on a few training batches: EagleEye's adaptive BN (Li et al., 2020),
which ranks candidates far better than evaluating with the base model's statistics. Results are cached
by the rounded channel counts (or kept-weight counts) and the dropped blocks, so a repeated candidate costs
nothing. A policy that drops blocks (``--depth``) is width-pruned first, then its blocks are replaced by the
identity (:func:`amc.pruning.depth.drop_blocks`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from amc.data.datasets import DataSplits
from amc.device import model_device
from amc.errors import ConfigError, DataError
from amc.graph.discover import LayerGraph
from amc.pruning.depth import drop_blocks, dropped_of
from amc.pruning.policy import Policy
from amc.pruning.pruner import Pruner, check_criterion, prune_model
from amc.evaluation.metrics import validate
from amc.evaluation.scores import Score, parse_score
from amc.data.streaming import take

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """How candidates are evaluated.

    Attributes:
        criterion: Channel/weight selection criterion (:data:`amc.pruning.criteria.CRITERIA`).
        granularity: ``"channel"`` or ``"weight"``.
        bn_batches: Training batches used to re-estimate BatchNorm statistics (0 = keep the base's).
        bn_batch_size: Size of those batches.
        batch_size: Batch size of the validation pass.
        val_limit: Evaluate on the first ``val_limit`` validation samples only (None = all).
        calibration_size: Samples of the calibration batch (``taylor``, ``apoz``, ``obd`` criteria).
        seed: Seeds the random criterion and the choice of BN/calibration batches.
        cache: Remember results by channel counts.
        score: The candidate score (:mod:`amc.evaluation.scores`), a spelling or a :class:`Score` (kept as its
            canonical spelling, the one history.csv and policy.json record): ``bn`` (adaptive BN), ``reconstruct``
            (least-squares refit of the layers after each pruned one, then adaptive BN), ``finetune:K``
            or ``finetune:K+kd`` (K SGD steps, optionally distilled from the base model). ``scripts/search.py``
            defaults to ``reconstruct``, the cheapest score whose rank correlation with the fine-tuned
            accuracy is within 0.05 of the best (BENCHMARKS.md, score fidelity); the library keeps ``bn``,
            four times cheaper, for the callers (tests, benchmarks) that rank candidates before fine-tuning.
        reconstruct_images, reconstruct_points: Training images and (at most) output positions per image
            the ``reconstruct`` score fits on (AMC: 60 and 10; more positions fit better, see amc.evaluation.reconstruct).
        reuse_base: Do what depends on the base model only once per evaluator: the criterion's statistics
            and the traced dependency graph (:class:`~amc.pruning.pruner.Pruner`), the base model's outputs
            for ``reconstruct``, which also refits in one pass. False redoes them for every candidate (the
            same results, slower: kept for the overhead benchmark and the tests that compare the two).
    """

    criterion: str = "l1"
    granularity: str = "channel"
    bn_batches: int = 8
    bn_batch_size: int = 128
    batch_size: int = 256  # larger batches spill activations out of the CPU caches (1024 is ~30% slower)
    val_limit: int | None = None
    calibration_size: int = 256
    seed: int = 0
    cache: bool = True
    score: str | Score = "bn"
    reconstruct_images: int = 60
    reconstruct_points: int = 1000
    reuse_base: bool = True

    def __post_init__(self) -> None:
        check_criterion(self.criterion, self.granularity)
        score = parse_score(self.score)
        object.__setattr__(self, "score", str(score))  # canonical spelling
        if not score.masked_weights and self.granularity != "channel":
            raise ConfigError(f"score {self.score!r} needs --granularity channel (masked weights are scored with 'bn')")
        for name in ("reconstruct_images", "reconstruct_points"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("bn_batches",):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("bn_batch_size", "batch_size", "calibration_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.val_limit is not None and self.val_limit < 1:
            raise ConfigError(f"val_limit must be >= 1 or None, got {self.val_limit}")


@dataclass(frozen=True)
class EvalResult:
    """Outcome of evaluating one policy.

    Attributes:
        accuracy: Validation top-1 accuracy of the pruned model.
        loss: Mean validation cross-entropy.
        key: Channel counts (or kept-weight counts) the policy produces, and the set of its dropped blocks when
            it drops any: the cache key.
        seconds: Wall time of the evaluation (0 when served from the cache).
        forward_seconds: Part of ``seconds`` spent in forward passes (BN recalibration + validation).
        cached: True when the result came from the cache.
    """

    accuracy: float
    loss: float
    key: tuple[int, ...]
    seconds: float
    forward_seconds: float
    cached: bool = False


@runtime_checkable
class Evaluator(Protocol):
    """Evaluates whole policies; the contract shared by the local and the Ray evaluator.

    An evaluator that can hand results over one by one, as they finish, is also a
    :class:`StreamingEvaluator`.
    """

    def evaluate(self, policy: Policy) -> EvalResult: ...

    def evaluate_many(self, policies: Sequence[Policy]) -> list[EvalResult]: ...


@runtime_checkable
class StreamingEvaluator(Evaluator, Protocol):
    """An :class:`Evaluator` whose ``evaluate_many`` also reports each result the moment it arrives.

    Attributes:
        streams_results: True when ``evaluate_many(policies, on_result=f)`` calls ``f(i, result)`` for
            policy ``i`` as soon as it is done (e.g. a parallel pool), so a caller can record results of
            a long batch without waiting for its slowest member; False for an evaluator that answers the
            whole batch at once (``on_result`` is then never passed).
    """

    streams_results: bool

    def evaluate_many(self, policies: Sequence[Policy], *,
                      on_result: Callable[[int, EvalResult], None] | None = None) -> list[EvalResult]: ...


def candidate_key(graph: LayerGraph, ratios: Sequence[float], granularity: str,
                  dropped: Sequence[str] | None = None) -> tuple:
    """What makes two width + depth policies the same candidate: :meth:`LayerGraph.candidate_key` of the keep
    ratios, then the frozen set of the dropped blocks when there are any (``dropped`` None: those ``ratios``
    names). Widths inside a dropped block must already be canonical (:func:`amc.pruning.depth.canonical`)."""
    key = graph.candidate_key(ratios, granularity)
    dropped = dropped_of(ratios) if dropped is None else tuple(dropped)
    return (*key, frozenset(dropped)) if dropped else key


def policy_key(graph: LayerGraph, policy: Policy) -> tuple:
    """:func:`candidate_key` of a policy (the key a Ray pool dedupes on)."""
    return candidate_key(graph, policy.ratios(graph), policy.granularity, policy.dropped)


def recalibrate_bn(model: nn.Module, batches: Sequence[Tensor]) -> None:
    """Re-estimates BatchNorm running statistics on ``batches`` (cumulative average), in place.

    Only the BatchNorm layers run in training mode; dropout and the rest stay in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not batches:
        return
    model.eval()
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the recalibration batches
        bn.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum
    model.eval()


class PolicyEvaluator:
    """The local :class:`Evaluator`: holds the base model and data once, evaluates policies on copies.

    Everything it evaluates on is gathered into memory once, on the model's device: the BatchNorm and
    calibration batches, the validation subset and what its score prepares (:meth:`Score.prepare`: the
    ``reconstruct`` images, the ``finetune:K`` samples). It is the :class:`~amc.evaluation.scores.ScoreInputs`
    its score reads. A
    streamed dataset (:mod:`amc.data.factory`, :mod:`amc.data.imagefolder`) is read for those items only.

    Args:
        model: The trained base model (not modified), on the device candidates are evaluated on.
        graph: Its :class:`~amc.graph.discover.LayerGraph`.
        data: The dataset splits; only ``train`` (BN/calibration batches) and ``val`` are touched.
        config: Evaluation settings.
    """

    streams_results = False  # answers a batch at once (see StreamingEvaluator)

    def __init__(self, model: nn.Module, graph: LayerGraph, data: DataSplits, config: EvalConfig = EvalConfig()) -> None:
        self.model = model.eval()
        self.graph = graph
        self.config = config
        self.device = device = model_device(model)
        generator = torch.Generator().manual_seed(config.seed)
        n_train = len(data.train)
        order = torch.randperm(n_train, generator=generator)
        n_bn = min(n_train, config.bn_batches * config.bn_batch_size) if config.bn_batches else 0
        n_first = max(n_bn, min(n_train, config.calibration_size))
        x_first, y_first = take(data.train, order[:n_first])  # the BN batches, then the calibration batch
        self._bn_batches = list(x_first[:n_bn].to(device).split(config.bn_batch_size)) if n_bn else []
        self._calibration = (x_first[: config.calibration_size].to(device), y_first[: config.calibration_size].to(device))
        self._order = order
        self.train_set: Dataset = data.train
        self._score = parse_score(config.score)
        self._prepared = self._score.prepare(self)  # e.g. the fine-tuning samples, gathered once
        limit = min(config.val_limit or len(data.val), len(data.val))
        x_val, y_val = take(data.val, range(limit))
        if len(y_val) and (int(y_val.min()) < 0 or int(y_val.max()) >= data.num_classes):
            raise DataError(f"the validation labels of {data.name} lie in [{int(y_val.min())}, {int(y_val.max())}]; "
                            f"labels must be class indices in [0, {data.num_classes - 1}]")
        self._val = (x_val.to(device), y_val.to(device))
        self._cache: dict[tuple[int, ...], EvalResult] = {}
        self._pruner: Pruner | None = None  # built at the first candidate (config.reuse_base)

    @property
    def val_set(self) -> tuple[Tensor, Tensor]:
        """(inputs, labels) candidates are scored on: the first ``val_limit`` validation samples."""
        return self._val

    @property
    def bn_batches(self) -> list[Tensor]:
        """The training batches adaptive BN re-estimates statistics on."""
        return list(self._bn_batches)

    @property
    def calibration(self) -> tuple[Tensor, Tensor]:
        """(inputs, labels) of the calibration batch the data-driven criteria (taylor, apoz, obd) rank on."""
        return self._calibration

    def recalibrate(self, model: nn.Module) -> None:
        """Adaptive BN: re-estimates ``model``'s BatchNorm statistics on :attr:`bn_batches`, in place."""
        recalibrate_bn(model, self._bn_batches)

    def training_images(self, n: int) -> Tensor:
        """The last ``n`` training images of the seeded order (apart from the BN batches), on the device."""
        return take(self.train_set, self._order[-n:])[0].to(self.device)

    @property
    def val_size(self) -> int:
        return len(self._val[1])

    def key(self, ratios: Sequence[float], dropped: Sequence[str] | None = None) -> tuple:
        """The cache key of keep ratios: :meth:`~amc.graph.records.LayerGraph.candidate_key` (rounded channel
        counts, or kept-weight counts), and the frozen set of the dropped blocks when there are any
        (``dropped`` None: those ``ratios`` names, see :class:`~amc.pruning.depth.DepthKeep`)."""
        return candidate_key(self.graph, ratios, self.config.granularity, dropped)

    def prune(self, policy: Policy | Sequence[float]) -> nn.Module:
        """The pruned copy of the base model for ``policy``, BatchNorm recalibrated."""
        pruned = self._pruned(self._ratios(policy), {})
        recalibrate_bn(pruned, self._bn_batches)
        return pruned

    def scored_model(self, policy: Policy | Sequence[float]) -> nn.Module:
        """The pruned copy of the base model as its score measured it: BatchNorm recalibrated and, with
        ``reconstruct`` or ``finetune:K``, refitted or tuned the same way (seeded: the same weights every
        time). Its validation accuracy is :meth:`evaluate`'s; it is the model a search reports and exports.
        """
        kept: dict[str, list[int]] = {}
        pruned = self._pruned(self._ratios(policy), kept)
        self.score(pruned, kept)
        return pruned.eval()

    def _pruned(self, ratios: list[float], kept: dict[str, list[int]]) -> nn.Module:
        """The base model pruned to ``ratios`` with this evaluator's criterion (``kept``: filled in), then the
        blocks ``ratios`` drops replaced by the identity."""
        if self.config.reuse_base:
            if self._pruner is None:
                self._pruner = Pruner(self.model, self.graph, criterion=self.config.criterion,
                                      granularity=self.config.granularity, calibration=self._calibration)
            pruned = self._pruner.prune(list(ratios), seed=self.config.seed, kept=kept)
        else:
            pruned = prune_model(self.model, self.graph, list(ratios), criterion=self.config.criterion,
                                 granularity=self.config.granularity, calibration=self._calibration,
                                 seed=self.config.seed, kept=kept)
        dropped = dropped_of(ratios)
        if dropped:
            drop_blocks(pruned, dropped, inplace=True)
            for name in [n for n in kept if any(n == b or n.startswith(b + ".") for b in dropped)]:
                del kept[name]  # its layers are gone: nothing of them to refit
        return pruned

    def forward_passes(self, pruned: nn.Module) -> tuple[float, float]:
        """The passes an evaluation contains on ``pruned`` and nothing else: BN recalibration, the score's
        own passes (:meth:`Score.passes`: e.g. ``reconstruct``'s calibration pass and second recalibration)
        and validation. The floor of :meth:`evaluate`'s time; its (accuracy, loss) are not the score's."""
        recalibrate_bn(pruned, self._bn_batches)
        self._score.passes(pruned, self, self._prepared)
        return validate(pruned, *self._val, batch_size=self.config.batch_size)

    def score(self, pruned: nn.Module, kept: dict[str, list[int]]) -> tuple[float, float]:
        """(accuracy, loss) of ``pruned`` under the configured score (``kept``: from :func:`prune_model`)."""
        recalibrate_bn(pruned, self._bn_batches)
        self._score.refine(pruned, kept, self, self._prepared)
        return validate(pruned, *self._val, batch_size=self.config.batch_size)

    def evaluate(self, policy: Policy | Sequence[float]) -> EvalResult:
        ratios = self._ratios(policy)
        key = self.key(ratios)
        if self.config.cache and key in self._cache:
            hit = self._cache[key]
            return EvalResult(hit.accuracy, hit.loss, key, 0.0, 0.0, cached=True)
        start = time.perf_counter()
        kept: dict[str, list[int]] = {}
        pruned = self._pruned(ratios, kept)
        forward_start = time.perf_counter()
        accuracy, loss = self.score(pruned, kept)
        end = time.perf_counter()
        result = EvalResult(accuracy, loss, key, end - start, end - forward_start)
        if self.config.cache:
            self._cache[key] = result
        return result

    def evaluate_many(self, policies: Sequence[Policy | Sequence[float]]) -> list[EvalResult]:
        return [self.evaluate(p) for p in policies]

    def _ratios(self, policy: Policy | Sequence[float]) -> Sequence[float]:
        """Keep ratios in graph order; a :class:`~amc.pruning.depth.DepthKeep` when the policy drops blocks."""
        if isinstance(policy, Policy):
            if policy.granularity != self.config.granularity or policy.criterion != self.config.criterion:
                raise ConfigError(
                    f"policy is {policy.granularity}/{policy.criterion} but the evaluator is "
                    f"{self.config.granularity}/{self.config.criterion}: build the evaluator with the policy's settings"
                )
            return policy.ratios(self.graph)
        ratios = [float(r) for r in policy]
        self.graph.channels(ratios)  # validates count and range
        return policy if dropped_of(policy) else ratios
