"""Search configuration: one frozen dataclass, validated once, built at the CLI edge."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from amc.errors import ConfigError
from search.values import (
    pruner_names,
    resource_names,
    sampler_names,
    strategy_names,
)

if TYPE_CHECKING:  # imported when a config is built: the CLI lists the choices without torch
    from amc.context import ContextConfig
    from amc.lm_context import LMContextConfig


def _default_context() -> ContextConfig:
    from amc.context import ContextConfig

    return ContextConfig()


@dataclass(frozen=True)
class SearchConfig:
    """One search run.

    Attributes:
        budget: Fraction of the base model's resource the pruned model may keep, in (0, 1].
        strategy: One of :func:`search.values.strategy_names`.
        sampler: Optuna sampler (``optuna`` strategy only), one of :func:`search.values.sampler_names`.
        evaluations: Policies to evaluate (episodes for RL, trials for Optuna).
        warmup: RL warm-up episodes with random actions (None: a quarter of ``evaluations``, <= 100).
        min_keep, max_keep: Range of per-layer keep ratios.
        reward: Reward name (:data:`envs.rewards.REWARDS`).
        out: Run folder.
        resume: Continue the run in ``out`` (keeps every evaluated result).
        storage: Optuna RDB URL (None: ``sqlite:///<out>/study.db``).
        context: Model, data and evaluation settings: a :class:`~amc.context.ContextConfig`, or for a language
            model's per-unit sparsity search an :class:`~amc.lm_context.LMContextConfig` (:mod:`search.lm`).
        progress: Show progress bars.
        export: Write ``pruned.pt2`` for the best policy.
        report: Write ``report.png`` and ``report.html`` (whose comparison table times the base and the pruned
            model). False: ``policy.json`` and the history only, for callers that table the results themselves
            (the headline benchmark's cells).
        workers: Parallel evaluation workers (Ray actors); None with ``ray_address``: one per
            ``threads_per_worker`` CPUs of the cluster.
        threads_per_worker: Torch threads (and CPUs reserved) per worker.
        gpus_per_worker: GPUs each worker reserves with ``--device cuda`` (fractions share one GPU; None:
            an equal share of the GPUs Ray sees, at most one per worker).
        ray_address: Ray cluster to join (``auto`` or ``host:port``); None: a local Ray instance is started
            only when ``workers > 1``.
        seed: Seed of the search strategy (None: ``context.seed``, which also seeds the data splits and
            the base model; set this to repeat a search on the same base model).
        ladder: Costlier candidate scores (:mod:`amc.evaluation.scores`, cheap to expensive) for the promising
            candidates (:mod:`search.ladder`): inside an Optuna study through its pruner, else a re-ranking of
            the search's best candidates after it; empty: the search's own score decides.
        ladder_top_k: Candidates the first rung re-scores after a non-Optuna search; each later rung keeps
            the better half.
        pruner: Optuna's pruner of a ladder: ``halving`` (successive halving) or ``hyperband``.
        baselines: Evaluate the uniform policy and Torch-Pruning's global-pruning widths first, as candidates
            (``origin`` ``baseline:*`` in ``history.csv``; :mod:`search.starts`). Strategies that are a
            baseline themselves (uniform, tp-global) ignore it.
        warm_start: ``policy.json`` files or run folders of earlier searches on the same model, whose policies
            are mapped onto this budget and evaluated first (``origin`` ``warm:<source>``).
        warm_start_top_k: Distinct policies a run folder of ``warm_start`` contributes, its best first.
        select: The deploy rung (:mod:`search.selection`): ``finetune:EPOCHS`` fine-tunes the ``select_top_k``
            best distinct candidates and the baselines with one recipe and returns the best by validation
            accuracy after it; None: the search's own (or the ladder's) score decides.
        select_top_k: Candidates of the search the deploy rung fine-tunes, besides the baselines.
        select_samples: Training samples (seeded, the same for every candidate) of each deploy-rung fine-tune.
        select_lr: Learning rate of those fine-tunes (SGD, cosine schedule).
    """

    budget: float = 0.3
    strategy: str = "optuna"
    sampler: str = "tpe"
    evaluations: int = 100  # the cheapest count that kept the headline's verdicts (BENCHMARKS.md, issue 31)
    warmup: int | None = None
    min_keep: float = 0.2
    max_keep: float = 1.0
    reward: str = "acc"
    out: str = "runs/latest"
    resume: bool = False
    storage: str | None = None
    context: ContextConfig | LMContextConfig = field(default_factory=_default_context)
    progress: bool = True
    export: bool = True
    report: bool = True
    workers: int | None = 1
    threads_per_worker: int = 1
    gpus_per_worker: float | None = None
    ray_address: str | None = None
    seed: int | None = None
    ladder: tuple[str, ...] = ()
    ladder_top_k: int = 8
    pruner: str = "halving"
    baselines: bool = True
    warm_start: tuple[str, ...] = ()
    warm_start_top_k: int = 3
    select: str | None = None
    select_top_k: int = 4
    select_samples: int = 10000
    select_lr: float = 0.01

    def __post_init__(self) -> None:
        from search.values import canonical_score

        object.__setattr__(self, "ladder", tuple(canonical_score(s) for s in self.ladder))
        if self.pruner not in pruner_names():
            raise ConfigError(f"unknown --pruner {self.pruner!r}: choose one of {', '.join(pruner_names())}")
        if self.ladder and self.strategy == "optuna" and self.sampler == "nsga2":
            raise ConfigError("--ladder with --sampler nsga2: Optuna prunes single-objective studies only; "
                              "use --sampler tpe, cmaes or random, or drop --ladder")
        if isinstance(self.ladder_top_k, bool) or not isinstance(self.ladder_top_k, int) or self.ladder_top_k < 1:
            raise ConfigError(f"--ladder-top-k must be a positive integer, got {self.ladder_top_k!r}")
        object.__setattr__(self, "warm_start", tuple(str(p) for p in self.warm_start))
        if self.select is not None:
            from search.values import OptionError, select_recipe

            try:
                object.__setattr__(self, "select", select_recipe(self.select))
            except OptionError as exc:
                raise ConfigError(f"--select {exc}") from None
            if self.select == "none":
                object.__setattr__(self, "select", None)
        for name in ("warm_start_top_k", "select_top_k", "select_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if isinstance(self.select_lr, bool) or not isinstance(self.select_lr, (int, float)) \
                or not 0 < self.select_lr <= 10:
            raise ConfigError(f"--select-lr must be a learning rate in (0, 10], got {self.select_lr!r}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)) or math.isnan(self.budget) \
                or not 0.0 < self.budget <= 1.0:
            raise ConfigError(f"--budget must be a fraction in (0, 1] of the base model's cost, got {self.budget!r}")
        if self.strategy not in strategy_names():
            raise ConfigError(f"unknown --strategy {self.strategy!r}: choose one of {', '.join(strategy_names())}")
        if self.sampler not in sampler_names():
            raise ConfigError(f"unknown --sampler {self.sampler!r}: choose one of {', '.join(sampler_names())}")
        if self.context.resource not in resource_names():
            raise ConfigError(f"unknown --resource {self.context.resource!r}: choose one of "
                              f"{', '.join(resource_names())}")
        if self.context.resource == "latency" and self.context.eval.granularity != "channel":
            raise ConfigError("--resource latency needs --granularity channel: unstructured sparsity leaves "
                              "dense kernels as slow as before")
        if self.language_model and (self.ladder or self.select):
            raise ConfigError("a language model's sparsity search has no --ladder or --select (no fine-tuning rung "
                              "for language models yet); drop them (--select none)")
        if not isinstance(self.evaluations, int) or self.evaluations < 1:
            raise ConfigError(f"--evaluations must be a positive integer, got {self.evaluations!r}")
        for name, value in (("--min-keep", self.min_keep), ("--max-keep", self.max_keep)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
                    or not 0.0 < value <= 1.0:
                raise ConfigError(f"{name} must be in (0, 1], got {value!r}")
        if self.min_keep > self.max_keep:
            raise ConfigError(f"--min-keep ({self.min_keep}) must not exceed --max-keep ({self.max_keep})")
        from envs.rewards import (
            get_reward,  # the registry; checks the reward fits the resource
        )

        get_reward(self.reward, resource=self.context.resource)
        if self.warmup is not None and not 0 <= self.warmup:
            raise ConfigError(f"--warmup must be >= 0, got {self.warmup!r}")
        if self.workers is not None and (isinstance(self.workers, bool) or self.workers < 1):
            raise ConfigError(f"--workers must be a positive integer, got {self.workers!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**32):
            raise ConfigError(f"search seed must be an integer in [0, 2**32), got {self.seed!r}")
        if self.threads_per_worker < 1:
            raise ConfigError(f"--threads-per-worker must be a positive integer, got {self.threads_per_worker!r}")
        if self.gpus_per_worker is not None:
            from search.parallel import check_gpus_per_worker

            check_gpus_per_worker(self.gpus_per_worker, self.context.device)

    def to_dict(self) -> dict:
        """The settings as JSON values (other objects as strings): what a run's ``config.json`` records."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    @property
    def language_model(self) -> bool:
        """A language model's sparsity search (``context`` an :class:`~amc.lm_context.LMContextConfig`)."""
        from amc.lm_context import LMContextConfig

        return isinstance(self.context, LMContextConfig)

    @property
    def search_seed(self) -> int:
        return self.context.seed if self.seed is None else self.seed

    @property
    def parallel(self) -> bool:
        """Evaluations go to a Ray pool: more than one worker, or a cluster to join."""
        return self.ray_address is not None or (self.workers or 1) > 1

    @property
    def warmup_episodes(self) -> int:
        if self.warmup is not None:
            return min(self.warmup, self.evaluations)
        return min(100, self.evaluations // 4)
