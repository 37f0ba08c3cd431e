"""How the episodes of an RL search reach the evaluator: N environments batched, rows of a resumed run replayed.

- :class:`BatchedVecEnv` and :class:`PrefetchEvaluator`: N environments whose terminal policies are
  evaluated in one batch (e.g. on a Ray pool).
- :class:`ReplayEvaluator`: a resumed agent's first episodes, which ``history.csv`` already holds
  (written after the agent's last checkpoint; see :mod:`search.strategies.rl.checkpoint`), are answered
  from their rows instead of being evaluated and recorded again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv

from amc.evaluation.evaluator import EvalResult
from amc.graph.discover import LayerGraph
from amc.pruning.policy import Policy
from search.history import Record
from search.problem import SearchProblem

log = logging.getLogger(__name__)


def replayed_result(record: Record) -> EvalResult:
    """The evaluation a ``history.csv`` row records, as the environment receives it."""
    return EvalResult(record.accuracy, record.loss, (), 0.0, 0.0, cached=True)


def same_policy(policy: Policy, record: Record, graph: LayerGraph) -> bool:
    """Whether ``record`` is the evaluation of ``policy`` (the same keep ratios, to float precision)."""
    keep = policy.ratios(graph)
    return len(keep) == len(record.keep) and bool(np.allclose(keep, record.keep, rtol=0.0, atol=1e-9))


def take_matching(pending: list[Record], policy: Policy, graph: LayerGraph) -> Record | None:
    """Removes and returns the first of ``pending`` that records ``policy``; None if none does."""
    for i, record in enumerate(pending):
        if same_policy(policy, record, graph):
            return pending.pop(i)
    return None


class ReplayEvaluator:
    """The evaluator of a resumed agent with one environment: its first episodes are the pending rows.

    Episode ``i`` after the checkpoint is the ``i``-th row that ``history.csv`` holds past it: its result
    comes from the row. Later episodes go to ``problem`` (evaluated and recorded).
    """

    streams_results = False

    def __init__(self, problem: SearchProblem, pending: Sequence[Record]) -> None:
        self.problem = problem
        self.pending = list(pending)

    def evaluate(self, policy: Policy) -> EvalResult:
        if not self.pending:
            return self.problem.evaluate(policy)
        record = self.pending.pop(0)
        if same_policy(policy, record, self.problem.graph):
            return replayed_result(record)
        log.warning("the resumed agent proposed another policy than history.csv row %d records; that row stays, "
                    "and this policy is evaluated for the agent without a row", record.index)
        return self.problem.evaluator.evaluate(policy)

    def evaluate_many(self, policies: Sequence[Policy]) -> list[EvalResult]:
        return [self.evaluate(p) for p in policies]


class PrefetchEvaluator:
    """The evaluator of N parallel environments: their terminal policies are evaluated in one batch.

    :class:`BatchedVecEnv` hands over the policies the current actions will finish; they are evaluated
    together (e.g. on a Ray pool) before the environments step, and each environment then picks up its
    own result. Policies beyond the evaluation budget (the last round of a run whose count is not a
    multiple of N) are not evaluated or recorded; their episodes get the batch's mean accuracy.

    A resumed agent's first rounds propose the policies that ``pending`` (rows written after its
    checkpoint) records: those are answered from their rows; what the rounds do not match is dropped.
    """

    streams_results = False

    def __init__(self, problem: SearchProblem, limit: int, *, pending: list[Record] | None = None) -> None:
        self.problem = problem
        self.limit = limit  # evaluations this strategy may still record
        self.pending = list(pending or [])
        self._replay_rounds: int | None = None  # rounds that may still reproduce pending rows
        self._ready: dict[tuple[float, ...], list[EvalResult]] = {}

    def prefetch(self, policies: list) -> None:
        results: dict[int, EvalResult] = {}
        if self.pending:
            if self._replay_rounds is None:
                self._replay_rounds = math.ceil(len(self.pending) / len(policies))
            for i, policy in enumerate(policies):
                record = take_matching(self.pending, policy, self.problem.graph)
                if record is not None:
                    results[i] = replayed_result(record)
            self._replay_rounds -= 1
            if self._replay_rounds == 0 and self.pending:
                log.warning("the resumed agent did not propose the policies of history.csv rows %s again; the rows "
                            "stay, the agent does not learn from them", [r.index for r in self.pending])
                self.pending = []
        todo = [i for i in range(len(policies)) if i not in results][: self.limit]
        results.update(zip(todo, self.problem.evaluate_many([policies[i] for i in todo]) if todo else []))
        self.limit -= len(todo)
        if len(results) < len(policies):
            mean = float(np.mean([r.accuracy for r in results.values()])) if results else 0.0
            for i in range(len(policies)):
                results.setdefault(i, EvalResult(mean, float("nan"), (), 0.0, 0.0, cached=True))
        for i, policy in enumerate(policies):
            self._ready.setdefault(tuple(policy.keep.values()), []).append(results[i])

    def evaluate(self, policy) -> EvalResult:
        waiting = self._ready.get(tuple(policy.keep.values()))
        if waiting:
            return waiting.pop(0)
        self.limit -= 1
        return self.problem.evaluate(policy)

    def evaluate_many(self, policies) -> list[EvalResult]:
        return [self.evaluate(p) for p in policies]


class BatchedVecEnv(DummyVecEnv):
    """``DummyVecEnv`` that evaluates all environments' finished policies in one batch per step."""

    def __init__(self, env_fns, prefetch: PrefetchEvaluator) -> None:
        super().__init__(env_fns)
        self.prefetch = prefetch

    def step_wait(self):
        previews = [env.unwrapped.preview(action) for env, action in zip(self.envs, self.actions)]
        finished = [p for p in previews if p is not None]
        if finished:
            self.prefetch.prefetch(finished)
        return super().step_wait()
