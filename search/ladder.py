"""Multi-fidelity search: the search's cheap score for every candidate, costlier scores for the promising few.

Two forms, one record format (``history.csv`` rows with ``rung`` >= 1, see :mod:`search.history`):

- **Optuna** (``--strategy optuna``) runs the ladder inside the study: each trial reports its rung-0 score
  and then each rung's score with ``trial.report``, and Optuna's own pruner (``--pruner halving``:
  :class:`optuna.pruners.SuccessiveHalvingPruner`, or ``hyperband``) stops the unpromising ones, which the
  study (and optuna-dashboard) shows as PRUNED. See :meth:`search.strategies.optuna_search.OptunaStrategy.run`.
- **Every other strategy** re-ranks its ``top_k`` best distinct candidates after the search
  (:func:`run_ladder`): all of them get the first rung's score, the better half the next rung's, and so on
  (successive halving).

Either way the best policy is the best candidate of the highest rung reached (:func:`search.history.rank`).
Each re-score is written to ``history.csv`` as soon as it is measured; ``--resume`` reads the rows back and
scores only what is missing, so a killed ladder loses nothing and scores no candidate twice. With a Ray pool
(``--workers N``) :func:`run_ladder`'s re-scores of a rung run on its workers at once, with the same scores
as on the driver; each row's ``pid`` names the process that measured it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

from amc.context import Context
from typing import Any

from amc.evaluation.evaluator import EvalResult, PolicyEvaluator
from search.values import PRUNERS
from search.history import Record
from search.problem import SearchProblem

log = logging.getLogger(__name__)


def rung_evaluators(ctx: Context, scores: Sequence[str]) -> list[PolicyEvaluator]:
    """One evaluator per ladder score, on the context's base model and data (in this process)."""
    return [PolicyEvaluator(ctx.model, ctx.graph, ctx.data, dataclasses.replace(ctx.config.eval, score=score))
            for score in scores]


def rung_step(rung: int) -> int:
    """The ``trial.report`` step of a rung: 1, 2, 4, ... (a successive-halving pruner with ``min_resource`` 1
    and reduction factor 2 decides at exactly these steps)."""
    return 2 ** rung


def make_pruner(name: str, rungs: int):
    """Optuna's pruner for a ladder of ``rungs`` scores after the search's own (each keeps the better half)."""
    import optuna

    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=rung_step(rungs), reduction_factor=2)
    raise ValueError(f"unknown pruner {name!r}; use one of {', '.join(PRUNERS)}")


_RUNG_EVALUATORS: dict[tuple[int, str], PolicyEvaluator] = {}  # (id(context), score) -> its evaluator


@dataclasses.dataclass(frozen=True)
class RescoreTask:
    """Scores a candidate with ``score`` on a context's base model and data (picklable: Ray workers run it)."""

    score: str

    def __call__(self, ctx: Context, policy) -> EvalResult:
        key = (id(ctx), self.score)
        if key not in _RUNG_EVALUATORS:
            _RUNG_EVALUATORS[key] = rung_evaluators(ctx, [self.score])[0]
        return _RUNG_EVALUATORS[key].evaluate(policy)


def run_ladder(problem: SearchProblem, ctx: Context, scores: Sequence[str], *, top_k: int, pool: Any = None) -> Record:
    """Re-ranks the search's best candidates with ``scores`` (cheap to expensive); returns the winner's record.

    With a Ray ``pool`` each rung's re-scores run on its workers, each recorded as it arrives.
    """
    from search.selection import run_tasks

    candidates = _top_distinct(problem, top_k)
    for rung, score in enumerate(scores, 1):
        todo = [r for r in candidates if problem.known_rescore(r, rung) is None]

        def record(i: int, result: EvalResult, pid: int, todo=todo, rung=rung, score=score) -> None:
            problem.record_rescore(todo[i], rung, score, result, pid=pid)

        pids = run_tasks(ctx, pool, RescoreTask(score), [problem.policy(r.keep) for r in todo], record)
        if pids:
            log.info("ladder rung %d: %d re-scores in %d process(es), pids %s", rung, len(todo), len(pids), sorted(pids))
        scored = sorted(((problem.known_rescore(r, rung), r) for r in candidates),
                        key=lambda pair: (-pair[0].reward, pair[1].cost, pair[1].index))
        log.info("ladder rung %d (%s): best %.4f of %d candidates (evaluation %d)", rung, score,
                 scored[0][0].accuracy, len(scored), scored[0][1].index)
        keep = len(scored) if rung == len(scores) else max(1, math.ceil(len(scored) / 2))
        candidates = [record for _, record in scored[:keep]]
    return problem.best


def _top_distinct(problem: SearchProblem, k: int) -> list[Record]:
    """The ``k`` best records of the search by reward, one per distinct candidate (:meth:`SearchProblem.key`)."""
    seen, out = set(), []
    for record in sorted(problem.records, key=lambda r: (-r.reward, r.cost, r.index)):
        key = problem.key(record.keep)
        if key not in seen:
            seen.add(key)
            out.append(record)
        if len(out) == k:
            break
    return out
