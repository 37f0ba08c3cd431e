"""The :class:`Strategy` base class and the registry of strategies by name.

A strategy proposes policies to a :class:`~search.problem.SearchProblem` (which evaluates and records them)
and declares, as class attributes, what the shared loop of :mod:`search.runner` needs to know about it:
how large its batches are with parallel workers, whether it proposes a single policy, and whether it
runs the multi-fidelity ladder itself. Each implementation registers itself where it is defined::

    @register
    class UniformStrategy(Strategy):
        name = "uniform"
        single_policy = True
        ...
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, TypeVar

if TYPE_CHECKING:
    from amc.context import Context
    from search.config import SearchConfig
    from search.problem import SearchProblem
    from search.history import Start

REGISTRY: dict[str, type[Strategy]] = {}
S = TypeVar("S", bound="type[Strategy]")


class Strategy(ABC):
    """A search strategy: proposes policies to a :class:`~search.problem.SearchProblem`.

    Attributes:
        name: The ``--strategy`` name; also written into every ``history.csv`` row.
        single_policy: It evaluates one policy whatever ``--evaluations`` says (more would repeat it).
        runs_own_ladder: It runs ``--ladder`` inside its own search (Optuna's pruner); otherwise the loop
            re-ranks the best candidates after the search (:func:`search.ladder.run_ladder`).
        parallel_batch: With several workers, policies per batch per worker. Independent proposals (random
            samples) use big batches: the pool records each result as it arrives, so every worker stays
            busy instead of waiting at each batch's slowest evaluation.
        min_batch: Policies per batch at least, with any number of workers.
        takes_baselines: The loop evaluates the baselines (:mod:`search.starts`) before this strategy's own
            proposals; False for a strategy that is a baseline itself (uniform, tp-global).
    """

    name: ClassVar[str]
    single_policy: ClassVar[bool] = False
    runs_own_ladder: ClassVar[bool] = False
    parallel_batch: ClassVar[int] = 1
    min_batch: ClassVar[int] = 1
    takes_baselines: ClassVar[bool] = True

    @classmethod
    def batch_size(cls, workers: int) -> int:
        """Policies per batch when ``workers`` evaluate in parallel (1: evaluations one at a time)."""
        return max(cls.min_batch, workers * cls.parallel_batch if workers > 1 else 1)

    @classmethod
    @abstractmethod
    def from_config(cls, config: SearchConfig, *, out: Path, batch_size: int, ctx: Context) -> Strategy:
        """The strategy a run's settings ask for.

        Args:
            config: The run's settings.
            out: The run folder (studies, agent checkpoints and curves are kept there).
            batch_size: Policies per batch (:meth:`batch_size` of the run's workers).
            ctx: The run's context (e.g. the base model a ladder's rung evaluators score on).
        """

    def evaluate_starts(self, problem: SearchProblem, starts: Sequence[Start]) -> None:
        """Evaluates the baselines and warm starts not evaluated yet, in one batch, before :meth:`run`.

        Strategies learn from them as from any recorded evaluation (Optuna adds them to its study, the RL
        agents replay them as demonstrations, random search draws after them); a strategy that must see
        them otherwise overrides this.
        """
        if starts:
            problem.evaluate_keeps([s.keep for s in starts], steps=list(range(problem.count, problem.count + len(starts))),
                                   origins=[s.origin for s in starts])

    @abstractmethod
    def run(self, problem: SearchProblem, evaluations: int, *, seed: int) -> None:
        """Spends ``evaluations`` evaluations of ``problem`` (which records each); ``seed`` seeds the proposals."""


def register(cls: S) -> S:
    """Class decorator: adds a :class:`Strategy` subclass to :data:`REGISTRY` under its ``name``.

    Raises:
        ValueError: Another class is registered under that name already.
    """
    known = REGISTRY.get(cls.name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"strategy {cls.name!r} is registered twice ({known.__qualname__}, {cls.__qualname__}); "
                         "give one of them another name")
    REGISTRY[cls.name] = cls
    return cls

