"""The search problem every strategy talks to: evaluate policies, record them, keep the best.

:class:`SearchProblem` is itself an :class:`~amc.evaluation.evaluator.Evaluator`, so the Gymnasium environment
(RL strategies) and whole-policy strategies (Optuna, random, uniform) go through the same recording
path: every evaluation lands in ``history.csv`` at once and updates the best policy and progress bar.

With ``--depth`` the cost model is a :class:`~amc.pruning.depth.DepthCost` and a candidate is keep ratios
that name the blocks they drop (a :class:`~amc.pruning.depth.DepthKeep`): :meth:`SearchProblem.canonical`
sets the widths inside dropped blocks to 1, so policies that differ only there are one candidate
(:meth:`SearchProblem.key`) and cost one evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

from amc.evaluation.evaluator import EvalResult, Evaluator, StreamingEvaluator
from amc.graph.discover import LayerGraph
from amc.evaluation.evaluator import candidate_key
from amc.pruning.depth import DepthCost, canonical
from amc.pruning.policy import Policy
from envs import BudgetProjector, RewardInput, get_reward
from search.history import SEARCH, HistoryWriter, Record, rank

log = logging.getLogger(__name__)


class SearchProblem:
    """Budget-constrained policy evaluation with recording.

    Args:
        graph: The base model's layer graph.
        cost_model: Cost model of the constrained resource.
        projector: The budget projection shared with the environment.
        evaluator: The evaluator doing the work (local or a Ray pool).
        history: Where records go.
        strategy: Name written into each record.
        reward: Reward name used for the records' ``reward`` column.
        criterion, granularity: Recorded in every policy.
        previous: Records of an earlier, interrupted run (``--resume``), every rung.
        on_record: Called after every record of an evaluation (progress bars); not for a ladder's re-scores.
        score: The candidate score of the evaluations (rung 0), written into each row.
    """

    def __init__(self, *, graph: LayerGraph, cost_model, projector: BudgetProjector, evaluator: Evaluator,
                 history: HistoryWriter | None, strategy: str, reward: str = "acc", criterion: str = "l1",
                 granularity: str = "channel", previous: Sequence[Record] = (),
                 on_record: Callable[[Record], None] | None = None, score: str = "") -> None:
        self.graph = graph
        self.cost_model = cost_model
        self.projector = projector
        self.evaluator = evaluator
        self.history = history
        self.strategy = strategy
        self.criterion = criterion
        self.granularity = granularity
        self._reward = get_reward(reward, resource=cost_model.resource)
        self.score = score
        # the removable blocks, in forward order, when the search also decides depth (--depth)
        self.blocks = tuple(cost_model.blocks) if isinstance(cost_model, DepthCost) else ()
        # one per evaluation: what strategies see
        self.records: list[Record] = [r for r in previous if r.rung == 0 and not r.repeat]
        # (candidate index, rung) -> the ladder's (or the deploy rung's) re-score of that candidate (rung >= 1)
        self.rescored: dict[tuple[int, int], Record] = {(r.index, r.rung): r for r in previous
                                                         if r.rung > 0 and not r.repeat}
        # (candidate index, rung) -> the same re-score with another seed (the deploy rung's noise)
        self.repeats: dict[tuple[int, int], Record] = {(r.index, r.rung): r for r in previous if r.repeat}
        self.best: Record | None = max([*self.records, *self.rescored.values()], key=rank, default=None)
        self.on_record = on_record
        self._start = time.perf_counter() - max((r.wall_time for r in previous), default=0.0)

    @property
    def budget(self) -> float:
        return self.projector.budget

    @property
    def count(self) -> int:
        return len(self.records)

    @property
    def depth(self) -> bool:
        """Whether blocks are decisions too (``--depth``)."""
        return bool(self.blocks)

    def canonical(self, keep: Sequence[float], dropped: Sequence[str] | None = None) -> Sequence[float]:
        """``keep`` as the one candidate it stands for: with dropped blocks (``dropped``, or those ``keep``
        names) a :class:`~amc.pruning.depth.DepthKeep` whose widths inside them are 1; else ``keep`` itself."""
        if not self.blocks or not (dropped if dropped is not None else getattr(keep, "dropped", ())):
            return keep
        return canonical(self.graph, self.blocks, keep, dropped=dropped)

    def policy(self, keep: Sequence[float], dropped: Sequence[str] | None = None) -> Policy:
        """The :class:`Policy` of ``keep`` (and the blocks it drops: ``dropped`` or those ``keep`` names)."""
        keep = self.canonical(keep, dropped)
        return Policy.from_ratios(self.graph, keep if getattr(keep, "dropped", ()) else list(keep),
                                  granularity=self.granularity, criterion=self.criterion,
                                  resource=self.cost_model.resource, budget=self.budget)

    def key(self, keep: Sequence[float], dropped: Sequence[str] | None = None) -> tuple:
        """What makes two candidates the same (:func:`~amc.evaluation.evaluator.candidate_key` of the canonical
        keep ratios: :meth:`LayerGraph.candidate_key`, and the dropped blocks when there are any)."""
        return candidate_key(self.graph, self.canonical(keep, dropped), self.granularity)

    # The Evaluator contract, for the environment.
    streams_results = False  # records arrive through evaluate_many's ``recorded``, not ``on_result``

    def evaluate(self, policy: Policy) -> EvalResult:
        return self.evaluate_many([policy])[0]

    def evaluate_many(self, policies: Sequence[Policy], *, steps: Sequence[int] | None = None,
                      recorded: dict[int, Record] | None = None,
                      origins: Sequence[str] | None = None) -> list[EvalResult]:
        """Evaluates and records ``policies``; returns their results in order.

        Args:
            policies: The policies (already feasible).
            steps: Each one's ``step`` column (default: the next evaluation numbers).
            recorded: Filled with batch position -> record as each result is recorded, so a caller knows
                what was recorded also when the batch is interrupted.
            origins: Each one's ``origin`` column (default: ``search``, the strategy's own proposals).
        """
        policies = list(policies)
        steps = list(steps) if steps is not None else list(range(self.count, self.count + len(policies)))
        origins = list(origins) if origins is not None else [SEARCH] * len(policies)
        recorded = {} if recorded is None else recorded

        def record(i: int, result: EvalResult) -> None:
            recorded[i] = self._record(policies[i].ratios(self.graph), result, steps[i], origins[i])

        if isinstance(self.evaluator, StreamingEvaluator) and self.evaluator.streams_results:
            # Each result is recorded the moment it arrives: an interrupt loses only unfinished work.
            return self.evaluator.evaluate_many(policies, on_result=record)
        results = self.evaluator.evaluate_many(policies)
        for i, result in enumerate(results):
            record(i, result)
        return results

    def evaluate_keeps(self, keeps: Sequence[Sequence[float]], *, steps: Sequence[int] | None = None,
                       recorded: dict[int, Record] | None = None,
                       origins: Sequence[str] | None = None) -> list[Record]:
        """Evaluates keep-ratio vectors (already feasible); returns their records in the order of ``keeps``.

        (Records land in ``history.csv`` in the order results arrive, which a parallel pool decides;
        ``recorded`` and ``origins``: see :meth:`evaluate_many`.)
        """
        recorded = {} if recorded is None else recorded
        self.evaluate_many([self.policy(k) for k in keeps], steps=steps, recorded=recorded, origins=origins)
        return [recorded[i] for i in range(len(keeps))]

    def rescore(self, record: Record, rung: int, score: str, evaluator: Evaluator) -> Record:
        """The ``rung``-th ladder score of the candidate ``record`` (a rung-0 record): read back if it was
        measured before (``--resume``), else measured with ``evaluator`` and written to ``history.csv``."""
        known = self.rescored.get((record.index, rung))
        if known is not None:
            return known
        return self.record_rescore(record, rung, score, evaluator.evaluate(self.policy(record.keep)))

    def known_rescore(self, record: Record, rung: int, *, repeat: int = 0) -> Record | None:
        """The re-score of ``record`` at ``rung`` measured before (``repeat`` 1: its noise measurement), if any."""
        return (self.repeats if repeat else self.rescored).get((record.index, rung))

    def record_rescore(self, record: Record, rung: int, score: str, result: EvalResult, *, repeat: int = 0,
                       pid: int = 0) -> Record:
        """Records ``result`` as the ``rung``-th score of the candidate ``record`` (``repeat`` 1: the same
        measurement with another seed, which never makes the candidate best; ``pid``: the process that measured
        it) and writes its row."""
        reward = self._reward(RewardInput(result.accuracy, record.cost, self.cost_model.base, self.budget,
                                          self.cost_model.resource))
        rescored = dataclasses.replace(record, accuracy=result.accuracy, loss=result.loss, reward=reward,
                                       cached=result.cached, seconds=result.seconds,
                                       wall_time=time.perf_counter() - self._start, rung=rung, score=score,
                                       repeat=repeat, pid=pid)
        (self.repeats if repeat else self.rescored)[record.index, rung] = rescored
        self._keep(rescored)
        return rescored

    def rungs(self, record: Record) -> list[Record]:
        """The candidate's rows, rung 0 first, as far as its ladder went."""
        out, rung = [record], 1
        while (record.index, rung) in self.rescored:
            out.append(self.rescored[record.index, rung])
            rung += 1
        return out

    def _record(self, keep: Sequence[float], result: EvalResult, step: int, origin: str = SEARCH) -> Record:
        cost = self.cost_model.cost(keep)  # a DepthCost reads the dropped blocks a DepthKeep names
        reward = self._reward(RewardInput(result.accuracy, cost, self.cost_model.base, self.budget,
                                          self.cost_model.resource))
        record = Record(
            index=self.count, strategy=self.strategy, step=step, accuracy=result.accuracy, loss=result.loss,
            cost=cost, cost_ratio=cost / self.cost_model.base, reward=reward, cached=result.cached,
            seconds=result.seconds, wall_time=time.perf_counter() - self._start,
            keep=keep if getattr(keep, "dropped", ()) else tuple(keep), score=self.score,
            origin=origin,
        )
        self.records.append(record)
        self._keep(record)
        if self.on_record is not None:
            self.on_record(record)
        return record

    def _keep(self, record: Record) -> None:
        """Writes the row and updates the best (:func:`search.history.rank`)."""
        if self.history is not None:
            self.history.append(record)
        if self.best is None or rank(record) > rank(self.best):
            self.best = record
            log.debug("new best %.4f at evaluation %d (rung %d)", record.accuracy, record.index, record.rung)
