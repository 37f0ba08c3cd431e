"""The context of a sparsity search on a language model: model, token data, decisions, cost and evaluator.

The language-model counterpart of :mod:`amc.context` (issue 36), with the attributes a search reads from a
:class:`~amc.context.Context`: ``config``, ``model``, ``graph`` (a :class:`~amc.cost.sparsity_cost.SparsityGraph`),
``evaluator`` (a :class:`~amc.evaluation.lm_evaluator.SparsityEvaluator`), ``blocks`` (none: no depth decision)
and :meth:`LMContext.cost_model`; besides them the token ``data``, the sparsity ``layout`` and OWL's baseline
(:meth:`LMContext.owl_keep`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from torch import nn

from amc.cost.sparsity_cost import RESOURCE, SparsityCost, SparsityGraph
from amc.data.lm_tokens import LMData, LMDataConfig, load_lm_data
from amc.device import resolve_device
from amc.errors import ConfigError
from amc.evaluation.lm_evaluator import LMEvalConfig, SparsityEvaluator
from amc.graph.records import fingerprint
from amc.lm_train import LMTrainConfig, LMTrainResult, load_or_train_lm
from amc.models.lm import build_lm
from amc.sparsity import SparsityBudget, SparsityLayout, discover_sparse, owl
from amc.sparsity.criteria import parse_levels
from amc.sparsity.layers import PER
from amc.train import load_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMContextConfig:
    """What to sparsify and how candidates are evaluated.

    Attributes:
        model: ``tiny-lm`` (the built-in decoder, trained here and cached) or ``hf:PATH`` (a local causal LM).
        model_kwargs: Factory (or ``from_pretrained``) arguments, as (name, value) pairs.
        checkpoint: A ``state_dict`` for a built-in model; None trains (and caches) it.
        data: Token data settings (corpus, tokenizer, window length, split).
        corpus_root: Folder of ``.py`` files (None: the installed standard library).
        train: Training of a built-in model when no checkpoint is given (``steps=0``: the seeded init).
        per: One decision per transformer ``block`` or per linear ``layer``.
        levels: The N:M levels a decision takes, e.g. ``("dense", "2:4", "1:4")`` (kept densest first); empty:
            unstructured sparsity. A decision's keep ratio is then its level's (2:4 is 0.5).
        eval: How candidates are evaluated.
        seed: Seeds the built-in model's training.
        device: Where the model is evaluated.
        cache_dir: Tokenizer, token and model cache (None: ``$AMC_CACHE_DIR`` or ``~/.cache/amc-search``).
    """

    model: str = "tiny-lm"
    model_kwargs: tuple[tuple[str, object], ...] = ()
    checkpoint: str | None = None
    data: LMDataConfig = field(default_factory=LMDataConfig)
    corpus_root: str | None = None
    train: LMTrainConfig = field(default_factory=LMTrainConfig)
    per: str = "block"
    levels: tuple[str, ...] = ()
    eval: LMEvalConfig = field(default_factory=LMEvalConfig)
    seed: int = 0
    device: str = "cpu"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        resolve_device(self.device)
        if isinstance(self.model_kwargs, dict):
            object.__setattr__(self, "model_kwargs", tuple(self.model_kwargs.items()))
        object.__setattr__(self, "levels", tuple(str(v) for v in parse_levels(self.levels)))
        if self.per not in PER:
            raise ConfigError(f"per={self.per!r}: choose one of {PER} (one sparsity decision per block or layer)")
        if self.checkpoint is not None and self.model.startswith("hf:"):
            raise ConfigError(f"--checkpoint with --model {self.model}: an hf: folder holds its own weights; "
                              "drop --checkpoint")

    @property
    def resource(self) -> str:
        """Always ``params``: the fraction of the prunable weights kept."""
        return RESOURCE


@dataclass
class LMContext:
    """A built language-model context (not frozen: it holds a model and tensors)."""

    config: LMContextConfig
    model: nn.Module
    data: LMData
    layout: SparsityLayout
    graph: SparsityGraph
    evaluator: SparsityEvaluator
    base: LMTrainResult | None
    blocks: list = field(default_factory=list)  # no depth decision
    _cost: SparsityCost | None = field(default=None, repr=False)

    def cost_model(self, resource: str | None = None, *, progress: bool = True) -> SparsityCost:
        """The cost model: prunable weights kept (``params``; another resource is a :class:`ConfigError`)."""
        if resource not in (None, RESOURCE):
            raise ConfigError(f"a sparsity search counts the prunable weights kept (resource {RESOURCE!r}), "
                              f"not {resource!r}")
        if self._cost is None:
            self._cost = SparsityCost(self.graph)
        return self._cost

    @property
    def device(self):
        return self.evaluator.device

    def owl_keep(self, budget: float, *, min_keep: float, max_keep: float) -> list[float]:
        """OWL's keep ratios (Yin et al., 2024, published M and lambda) at ``budget``: exact target average."""
        sparsity = SparsityBudget(self.layout, budget, min_sparsity=1.0 - max_keep, max_sparsity=1.0 - min_keep)
        stats = self.evaluator.stats
        if stats is None:  # magnitude pruning calibrates nothing; OWL needs the input norms
            from amc.sparsity import calibrate

            batches = [b.to(self.device) for b in self.evaluator.calibration.split(self.config.eval.batch_size)]
            stats = calibrate(self.model, self.layout, batches)
        return [1.0 - s for s in owl(self.model, sparsity, stats)]


def build_lm_context(config: LMContextConfig, *, data: LMData | None = None, model: nn.Module | None = None,
                     progress: bool = True, state_dict: dict | None = None) -> LMContext:
    """Loads the token data, loads or trains the model, finds its prunable layers and builds the evaluator.

    Args:
        config: The settings.
        data: Prebuilt token data (tests, benchmarks); None loads it from ``config.data``.
        model: A prebuilt dense model (tests); None builds, loads or trains it from ``config``.
        progress: Progress bars while training.
        state_dict: The dense weights (e.g. shipped to a Ray worker): replace the checkpoint/cache lookup.
    """
    device = resolve_device(config.device)
    if data is None:
        data = load_lm_data(config.data, root=config.corpus_root, cache_dir=config.cache_dir)
    base = None
    kwargs = dict(config.model_kwargs)
    if model is None:
        if config.model.startswith("hf:"):
            model = build_lm(config.model, vocab_size=data.vocab_size, **kwargs)
        elif config.checkpoint is not None or state_dict is not None:
            model = build_lm(config.model, **{"vocab_size": data.vocab_size, "context": data.seq_len, **kwargs})
            if state_dict is None:
                load_checkpoint(model, config.checkpoint)
        else:
            model, base = load_or_train_lm(config.model, data, seed=config.seed, config=config.train,
                                           model_kwargs=kwargs, cache_dir=config.cache_dir, progress=progress,
                                           device=device)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    model = model.to(device).eval()
    layout = discover_sparse(model, per=config.per)
    graph = SparsityGraph(layout, fingerprint(model), levels=config.levels)
    evaluator = SparsityEvaluator(model, graph, data, config.eval)
    log.info("LM context: %s on %s, %d %s decisions (%s) over %d prunable weights, %s, score %s, device %s, pid %d",
             config.model, data.name, len(graph), config.per,
             "N:M levels " + ", ".join(config.levels) if config.levels else "unstructured", layout.total,
             config.eval.criterion, config.eval.score, device, os.getpid())
    return LMContext(config=config, model=model, data=data, layout=layout, graph=graph, evaluator=evaluator,
                     base=base)


__all__ = ["LMContext", "LMContextConfig", "build_lm_context"]
