"""Evaluation of a sparsity policy on a language model: mask the weights in place, score, restore.

The :class:`~amc.evaluation.evaluator.Evaluator` of a per-unit sparsity search (issue 36). What depends only on
the dense model is done once, when the evaluator is built: the calibration statistics of every prunable layer
(Wanda's input norms, SparseGPT's Hessians: :func:`~amc.sparsity.calibrate.calibrate`), a copy of the dense
weights, and for the ``kl`` score the dense model's next-token distributions. A candidate is then one
:func:`~amc.sparsity.apply.sparsify` of the model in place (no copy of the model), one scoring pass, and one
:func:`~amc.sparsity.apply.restore`. With N:M levels (the graph's) a candidate's keep ratios are its units' levels
(:meth:`~amc.cost.sparsity_cost.SparsityGraph.decisions`) and the masks are N:M patterns.

The score is reported the way the search machinery reads an image model's (higher ``accuracy`` is better,
``loss`` is the cross-entropy-like figure):

- ``ppl``: ``loss`` is the mean next-token negative log-likelihood on the held-out windows (nats, the log of
  the perplexity); ``accuracy = exp(-loss) = 1 / perplexity``, the geometric-mean probability of the right
  next token, in (0, 1].
- ``kl``: ``loss`` is the mean ``KL(p_dense || p_sparse)`` on the calibration windows (EvoPress's score);
  ``accuracy = exp(-loss)``, 1 for the dense model.

Both are monotone in their loss, so a search that maximises ``accuracy`` minimises perplexity (or KL).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

from amc.cost.sparsity_cost import GRANULARITY, SparsityGraph
from amc.data.lm_tokens import LMData
from amc.device import model_device
from amc.errors import ConfigError
from amc.evaluation.evaluator import EvalResult
from amc.evaluation.lm_scores import DenseReference, kl_to_dense, next_token_nll
from amc.pruning.policy import Policy
from amc.sparsity import CRITERIA, bake, calibrate, dense_weights, restore, sparsify
from amc.sparsity.calibrate import LayerStats

SCORES = ("ppl", "kl")


@dataclass(frozen=True)
class LMEvalConfig:
    """How sparsity candidates are evaluated.

    Attributes:
        criterion: Which weights go inside a layer: ``magnitude``, ``wanda`` or ``sparsegpt``.
        score: ``ppl`` (held-out perplexity) or ``kl`` (KL to the dense model on calibration windows).
        calibration_windows: Calibration windows the statistics (and the ``kl`` reference) are computed on.
        heldout_windows: Held-out windows perplexity is measured on (None: every one).
        batch_size: Windows per forward pass.
        cache: Remember results by candidate key (the weights removed per layer).
    """

    criterion: str = "wanda"
    score: str = "ppl"
    calibration_windows: int = 32
    heldout_windows: int | None = 64
    batch_size: int = 16
    cache: bool = True

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ConfigError(f"unknown sparsity criterion {self.criterion!r}: choose one of {CRITERIA}")
        if self.score not in SCORES:
            raise ConfigError(f"unknown language-model score {self.score!r}: choose one of {SCORES}")
        for name in ("calibration_windows", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if self.heldout_windows is not None and (isinstance(self.heldout_windows, bool)
                                                 or not isinstance(self.heldout_windows, int)
                                                 or self.heldout_windows < 1):
            raise ConfigError(f"heldout_windows={self.heldout_windows!r} must be a positive integer or None")

    @property
    def granularity(self) -> str:
        """Always ``weight`` (what a search's records and policies say, as ``EvalConfig.granularity``)."""
        return GRANULARITY


class SparsityEvaluator:
    """The local :class:`~amc.evaluation.evaluator.Evaluator` of sparsity policies of one language model.

    Args:
        model: The dense model, on the device candidates are evaluated on. It is masked and restored in place
            for each candidate (always dense again between calls).
        graph: Its :class:`~amc.cost.sparsity_cost.SparsityGraph`.
        data: The token data (calibration and held-out splits are read).
        config: Evaluation settings.
    """

    streams_results = False  # answers a batch at once

    def __init__(self, model: nn.Module, graph: SparsityGraph, data: LMData,
                 config: LMEvalConfig = LMEvalConfig()) -> None:
        self.model = model.eval()
        self.graph = graph
        self.layout = graph.layout
        self.config = config
        self.device = model_device(model)
        self.calibration = data.calibration.windows(data.seq_len, limit=config.calibration_windows)
        self.heldout = data.heldout.windows(data.seq_len, limit=config.heldout_windows)
        self.dense = dense_weights(model, self.layout)
        self.stats: dict[str, LayerStats] | None = None
        if config.criterion != "magnitude":
            batches = [b.to(self.device) for b in self.calibration.split(config.batch_size)]
            self.stats = calibrate(model, self.layout, batches, hessian=config.criterion == "sparsegpt")
        self.reference = (DenseReference.compute(model, self.calibration, batch_size=config.batch_size)
                          if config.score == "kl" else None)
        self._cache: dict[tuple[int, ...], EvalResult] = {}

    @property
    def criterion(self) -> str:
        return self.config.criterion

    def key(self, ratios: Sequence[float]) -> tuple[int, ...]:
        """The cache key: weights removed per layer."""
        return self.graph.candidate_key(ratios, GRANULARITY)

    @contextmanager
    def sparsified(self, policy: Policy | Sequence[float]) -> Iterator[nn.Module]:
        """The model with ``policy``'s masks (unstructured, or the N:M levels of a graph with levels), for the
        ``with`` block; dense again afterwards."""
        decisions = self.graph.decisions(self._ratios(policy))
        try:
            sparsify(self.model, self.layout, decisions, criterion=self.config.criterion, stats=self.stats)
            yield self.model
        finally:
            restore(self.model, self.layout, self.dense)

    def sparse_model(self, policy: Policy | Sequence[float]) -> nn.Module:
        """A copy of the model with ``policy``'s zeros baked in (plain weights, no masks): what is exported."""
        with self.sparsified(policy) as model:
            return bake(copy.deepcopy(model), self.layout)

    def loss(self, model: nn.Module) -> float:
        """The configured score's loss of ``model`` (see the module docstring)."""
        if self.reference is not None:
            return kl_to_dense(model, self.reference, batch_size=self.config.batch_size)
        return self.heldout_nll(model)

    def heldout_nll(self, model: nn.Module) -> float:
        """Mean held-out next-token NLL (the log of the perplexity), whatever the score."""
        return next_token_nll(model, self.heldout, batch_size=self.config.batch_size)

    def perplexity(self, policy: Policy | Sequence[float]) -> float:
        """Held-out perplexity of ``policy`` (the figure reported beside any score)."""
        with self.sparsified(policy) as model:
            return math.exp(self.heldout_nll(model))

    def evaluate(self, policy: Policy | Sequence[float]) -> EvalResult:
        ratios = self._ratios(policy)
        key = self.key(ratios)
        if self.config.cache and key in self._cache:
            hit = self._cache[key]
            return EvalResult(hit.accuracy, hit.loss, key, 0.0, 0.0, cached=True)
        start = time.perf_counter()
        with self.sparsified(ratios) as model:
            forward_start = time.perf_counter()
            loss = self.loss(model)
            forward_end = time.perf_counter()
        end = time.perf_counter()
        result = EvalResult(math.exp(-loss), loss, key, end - start, forward_end - forward_start)
        if self.config.cache:
            self._cache[key] = result
        return result

    def evaluate_many(self, policies: Sequence[Policy | Sequence[float]]) -> list[EvalResult]:
        return [self.evaluate(p) for p in policies]

    def _ratios(self, policy: Policy | Sequence[float]) -> list[float]:
        if isinstance(policy, Policy):
            if policy.granularity != GRANULARITY:
                raise ConfigError(f"a sparsity policy has granularity {GRANULARITY!r}, got {policy.granularity!r}")
            if policy.criterion in CRITERIA and policy.criterion != self.config.criterion:
                raise ConfigError(f"policy was searched with criterion {policy.criterion!r}, the evaluator prunes "
                                  f"with {self.config.criterion!r}: build the evaluator with the policy's criterion")
            return policy.ratios(self.graph)  # type: ignore[arg-type]
        ratios = [float(r) for r in policy]
        self.graph.sparsities(ratios)  # validates count and range
        return ratios


__all__ = ["LMEvalConfig", "SCORES", "SparsityEvaluator"]
