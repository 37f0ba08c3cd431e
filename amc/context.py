"""The evaluation context: everything a search needs, built once from names.

Search strategies, the Gymnasium registration and Ray actors all build their model, data, layer graph,
cost model and evaluator through :func:`build_context`, so every process sees the same problem.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field

from torch import nn

from amc.cost.analytic import make_cost_model
from amc.data.datasets import DataSplits, load_dataset
from amc.device import resolve_device
from amc.errors import ConfigError
from amc.evaluation.evaluator import EvalConfig, PolicyEvaluator
from amc.cost.latency import LatencyConfig
from amc.graph.blocks import Block, find_blocks, has_blocks, require_blocks
from amc.graph.budget import DEFAULT_SECONDS
from amc.graph.discover import LayerGraph, discover
from amc.pruning.depth import DepthCost
from amc.evaluation.metrics import accuracy
from amc.train import TrainConfig, TrainResult, load_checkpoint, load_or_train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContextConfig:
    """What to prune and how candidates are evaluated.

    Attributes:
        model: Built-in model name or ``package.module:factory``.
        dataset: Built-in dataset name (see :data:`amc.data.datasets.DATASETS`), ``imagefolder`` or
            ``package.module:factory`` (:mod:`amc.data.factory`, :mod:`amc.data.imagefolder`).
        data_dir: Directory of file-based datasets (fashion-mnist, mnist, cifar10, imagefolder; a
            factory's ``data_dir`` argument).
        checkpoint: A trained ``state_dict`` for ``model``; None trains (and caches) a base model.
        seed: Seeds data splits, base-model training and evaluation.
        resource: ``"flops"``, ``"params"`` or ``"latency"`` (measured, see :mod:`amc.cost.latency`).
        round_to: Channel counts are multiples of this.
        val_size: Validation samples carved from the training set (None: the dataset's default).
        train_limit: Use at most this many training samples (None: all).
        eval: How candidates are evaluated.
        train: How the base model is trained when no checkpoint is given.
        latency: How the latency table is measured (``resource="latency"`` only).
        cache_dir: Base-model cache (None: ``$AMC_CACHE_DIR`` or ``~/.cache/amc-search``).
        model_kwargs: Extra keyword arguments of the model factory, as (name, value) pairs.
        dataset_kwargs: Settings of ``imagefolder`` or keyword arguments of a dataset factory, as
            (name, value) pairs.
        device: ``cpu``, ``cuda`` or ``cuda:N``: where the base model is trained and candidates are
            evaluated (checked when the config is made: a missing GPU is a :class:`ConfigError`).
        loader_workers: DataLoader worker processes that read a streamed (user) dataset.
        discovery_seconds: Seconds layer discovery may take before the model is refused in one line
            (:mod:`amc.graph.budget`; None: no limit).
        depth: Depth and width together (``--depth``): besides the widths, each removable block
            (:func:`amc.graph.blocks.find_blocks`) is a keep/drop decision; the cost model is then a
            :class:`~amc.pruning.depth.DepthCost` (FLOPs, params or latency). A model without a removable block
            is a :class:`ConfigError`, raised before any base model is trained.
    """

    model: str = "cnn"
    dataset: str = "digits"
    data_dir: str | None = None
    checkpoint: str | None = None
    seed: int = 0
    resource: str = "flops"
    round_to: int = 1
    val_size: int | float | None = None
    train_limit: int | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    cache_dir: str | None = None
    model_kwargs: tuple[tuple[str, object], ...] = ()
    dataset_kwargs: tuple[tuple[str, object], ...] = ()
    device: str = "cpu"
    loader_workers: int = 2
    discovery_seconds: float | None = DEFAULT_SECONDS
    depth: bool = False

    def __post_init__(self) -> None:
        resolve_device(self.device)
        if isinstance(self.loader_workers, bool) or not isinstance(self.loader_workers, int) or self.loader_workers < 0:
            raise ConfigError(f"--loader-workers must be an integer >= 0, got {self.loader_workers!r}")
        for name in ("model_kwargs", "dataset_kwargs"):
            value = getattr(self, name)
            if isinstance(value, dict):  # a dict is accepted and stored as (name, value) pairs
                object.__setattr__(self, name, tuple(value.items()))
            elif not all(isinstance(kv, (tuple, list)) and len(kv) == 2 and isinstance(kv[0], str) for kv in value):
                raise ConfigError(f"{name} must be (name, value) pairs or a dict, got {value!r}")
        if not isinstance(self.depth, bool):
            raise ConfigError(f"depth must be True or False, got {self.depth!r}")
        if self.depth and self.eval.granularity != "channel":
            raise ConfigError("--depth needs --granularity channel: a dropped block removes whole layers")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"--round-to must be a positive integer, got {self.round_to!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"--seed must be an integer in [0, 2**32), got {self.seed!r}")


@dataclass
class Context:
    """A built evaluation context (not frozen: it holds a model and tensors).

    ``blocks``: the removable blocks (``config.depth``), in forward order; empty without ``--depth``.
    """

    config: ContextConfig
    model: nn.Module
    data: DataSplits
    graph: LayerGraph
    evaluator: PolicyEvaluator
    base: TrainResult | None
    blocks: list[Block] = field(default_factory=list)
    _costs: dict = field(default_factory=dict, repr=False)

    def cost_model(self, resource: str | None = None, *, progress: bool = True):
        """The cost model of ``resource`` (default: the configured one), built once per context.

        ``"latency"`` loads the cached latency table or measures it here, on this machine. With ``--depth`` the
        configured resource's model is a :class:`~amc.pruning.depth.DepthCost` (cost of keep ratios and
        dropped blocks; everything else the width model's), and so is the other analytic resource's.
        """
        resource = resource or self.config.resource
        granularity = self.config.eval.granularity
        if resource not in self._costs:
            if resource == "latency":
                from amc.cost.latency import build_latency_cost

                if granularity != "channel":
                    raise ConfigError("a latency budget needs --granularity channel: unstructured sparsity "
                                      "leaves dense kernels as slow as before")
                latency = self.config.latency
                if latency.cache_dir is None and self.config.cache_dir is not None:
                    latency = dataclasses.replace(latency, cache_dir=self.config.cache_dir)
                cost = build_latency_cost(self.model, self.graph, latency, progress=progress, blocks=self.blocks)
                self._costs[resource] = DepthCost(cost, self.blocks) if self.blocks else cost
            else:
                cost = make_cost_model(resource, self.graph, granularity=granularity)
                if self.blocks:  # FLOPs and params: both cost the dropped blocks
                    cost = DepthCost(cost, self.blocks)
                self._costs[resource] = cost
        return self._costs[resource]

    @property
    def device(self):
        """The ``torch.device`` the model and the evaluator's batches are on."""
        return self.evaluator.device

    def example(self, n: int = 1):
        """The first ``n`` validation images on the CPU (example input of exports and layer discovery)."""
        return self.data.example(n)

    @property
    def base_val_accuracy(self) -> float:
        return self.base.val_accuracy if self.base else accuracy(self.model, self.data.val)


def build_context(config: ContextConfig, *, progress: bool = True, state_dict: dict | None = None,
                  graph: LayerGraph | None = None, blocks: list[Block] | None = None) -> Context:
    """Loads data, loads or trains the base model, discovers its layers and builds the evaluator.

    ``state_dict`` (e.g. shipped to a Ray worker on another node) replaces the checkpoint/cache lookup.
    ``graph``, the layers discovered on the same model (shipped along with its weights), is used instead of
    discovering them again: a Ray worker then starts without the probe (and the ~1.5 s of ``torch._dynamo``
    imports that ``FlopCounterMode`` brings). ``blocks``, the removable blocks found on the same model
    (``config.depth``), likewise replace finding them again.

    Raises:
        ConfigError: ``graph`` names a layer the model does not have, or one of another width; ``config.depth``
            and the model has no removable block.
    """
    device = resolve_device(config.device)
    data = load_dataset(config.dataset, root=config.data_dir, seed=config.seed, val_size=config.val_size,
                        train_limit=config.train_limit, kwargs=dict(config.dataset_kwargs),
                        workers=config.loader_workers)
    model_kwargs = dict(config.model_kwargs)
    if config.checkpoint or state_dict is not None:
        from amc.models import build_model

        model = build_model(config.model, in_channels=data.input_shape[0], num_classes=data.num_classes,
                            input_size=data.input_shape[1:], **model_kwargs)
        if state_dict is not None:
            model.load_state_dict(state_dict)
        else:
            load_checkpoint(model, config.checkpoint)
        base = None
    else:
        if config.depth and blocks is None:  # refuse a model without blocks before training it (same architecture)
            _require_blocks_untrained(config, data, model_kwargs)
        model, base = load_or_train(config.model, data, seed=config.seed, config=config.train,
                                    cache_dir=config.cache_dir, model_kwargs=model_kwargs, progress=progress,
                                    device=device)
    model.cpu().eval()  # layers are discovered on the CPU, then the model moves to its device for good
    if graph is None:
        graph = discover(model, data.example(1), round_to=config.round_to, time_budget_s=config.discovery_seconds)
    else:
        if graph.round_to != config.round_to:
            raise ConfigError(f"the layer graph was discovered with round_to={graph.round_to}, the config has "
                              f"round_to={config.round_to}: pass a graph discovered with the config's, or none")
        _check_graph(graph, model)
    if not config.depth:
        blocks = []
    elif blocks is None:  # found on the CPU model, like the layers
        blocks = require_blocks(find_blocks(model, data.example(1), graph=graph), config.model)
        log.info("depth: %d removable blocks (%s)", len(blocks), ", ".join(b.name for b in blocks))
    model.to(device)
    evaluator = PolicyEvaluator(model, graph, data, config.eval)
    log.info("context: %s on %s, %d decisions, device %s, pid %d", config.model, config.dataset, len(graph), device,
             os.getpid())
    return Context(config=config, model=model, data=data, graph=graph, evaluator=evaluator, base=base, blocks=blocks)


def _require_blocks_untrained(config: ContextConfig, data: DataSplits, model_kwargs: dict) -> None:
    """The one-line ``--depth`` refusal of a model without a removable block, found on the untrained model
    (blocks are a matter of architecture, not weights): before any base model is trained."""
    from amc.models import build_model

    model = build_model(config.model, in_channels=data.input_shape[0], num_classes=data.num_classes,
                        input_size=data.input_shape[1:], **model_kwargs).eval()
    if not has_blocks(model, data.example(1)):
        require_blocks([], config.model)


def _check_graph(graph: LayerGraph, model: nn.Module) -> None:
    for spec in graph.layers:
        try:
            module = model.get_submodule(spec.name)
        except AttributeError:
            raise ConfigError(f"the layer graph names {spec.name!r}, which the model does not have: pass the graph "
                              "discovered on this model, or none") from None
        width = getattr(module, "out_channels", getattr(module, "out_features", None))
        if spec.pattern == "channel" and width is not None and width != spec.out_channels:
            raise ConfigError(f"the layer graph gives {spec.name!r} {spec.out_channels} channels, the model {width}: "
                              "pass the graph discovered on this model, or none")
