"""The deploy rung (``--select finetune:EPOCHS``) and the verdict: is the search's policy better than the
free alternatives after the fine-tune a user would run anyway?

After the search (and its ladder), the ``--select-top-k`` best distinct candidates of the search and every
baseline (``baseline:uniform``, ``baseline:tp-global``; :mod:`search.starts`) are fine-tuned with one recipe
(:class:`amc.deploy.DeployRecipe`) and compared by validation accuracy after it. The winner is the run's
policy (``policy.json``, ``pruned.pt2``). Each measurement is a ``history.csv`` row of the last rung
(``score`` ``deploy:finetune:EPOCHS``), written as it is measured, so ``--resume`` continues a killed
selection without fine-tuning any candidate twice. With ``--workers N`` the fine-tunes run on the Ray pool.

The selection's noise is measured, not assumed: the winner and the best candidate of the other side (the
best baseline when a searched policy wins, the best searched policy when a baseline wins) are fine-tuned
once more with another seed (``repeat`` 1 rows, which never win). :class:`Verdict` compares the best
searched policy with the best baseline on the deploy score and says whether the gain exceeds that noise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from amc.evaluation.evaluator import EvalResult
from search.history import Record, rank

if TYPE_CHECKING:
    from amc.context import Context
    from amc.deploy import DeployRecipe
    from search.config import SearchConfig
    from search.problem import SearchProblem

log = logging.getLogger(__name__)
NOISE_SEED_OFFSET = 1  # the repeat's fine-tune seed: the run's seed + 1


# -- tasks a Ray actor (or this process) runs on its context ------------------------------------------------------

_TUNE_SETS: dict[tuple[int, int], Any] = {}  # (id(context), samples) -> the recipe's images, gathered once


@dataclass(frozen=True)
class DeployTask:
    """Fine-tune a candidate with ``recipe`` and ``seed``; its validation result (picklable, for Ray actors).

    The global generators (dropout's draws) are seeded with ``seed`` too, so a candidate's result is the same in
    whichever process runs it, after whatever ran there before: a pool's workers give the serial path's scores.
    """

    recipe: DeployRecipe
    seed: int

    def __call__(self, ctx: Context, policy) -> EvalResult:
        from amc.deploy import deploy_score, tune_set
        from amc.device import model_device
        from amc.seeding import seeded

        key = (id(ctx), self.recipe.samples)
        if key not in _TUNE_SETS:
            _TUNE_SETS[key] = tune_set(ctx.data.train, self.recipe.samples)
        with seeded(self.seed, model_device(ctx.model)):
            return deploy_score(ctx, policy, self.recipe, seed=self.seed, samples=_TUNE_SETS[key])


def run_tasks(ctx: Context, pool: Any, task: Callable[[Context, Any], EvalResult], policies: Sequence[Any],
              on_result: Callable[[int, EvalResult, int], None]) -> set[int]:
    """Runs ``task`` on every policy, on the pool's workers when there is a pool (:meth:`RayEvaluatorPool.map`:
    each result handed to ``on_result(i, result, pid)`` as it arrives), else here in order; ``pid`` is the
    process that ran it. Returns the pids of the processes that ran them."""
    if pool is not None and hasattr(pool, "map"):
        return pool.map(task, list(policies), on_result=on_result)
    for i, policy in enumerate(policies):
        on_result(i, task(ctx, policy), os.getpid())
    return {os.getpid()} if policies else set()


# -- the deploy rung -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """The search's best policy against the best baseline on one score.

    Attributes:
        score: The score compared (``deploy:finetune:1``, or the search's own without ``--select``).
        searched: The best candidate that is not a baseline on that score (None: the search had none).
        baseline: The best baseline on that score (None: no baselines were evaluated).
        chosen: The run's policy.
        noise: The largest seed-to-seed difference of the repeated fine-tunes (None: not measured).
    """

    score: str
    searched: Record | None
    baseline: Record | None
    chosen: Record
    noise: float | None

    @property
    def gain(self) -> float | None:
        """Searched minus best baseline, accuracy points as a fraction (None without both)."""
        if self.searched is None or self.baseline is None:
            return None
        return self.searched.accuracy - self.baseline.accuracy

    @property
    def paid(self) -> bool | None:
        """The searched policy beats the best baseline by more than the noise (None: cannot tell)."""
        if self.gain is None:
            return None
        return self.gain > (self.noise if self.noise is not None else 0.0) and not self.chosen.is_baseline

    def text(self) -> str:
        """One or two plain sentences for the summary, the report and ``policy.json``."""
        if self.baseline is None:
            return f"no baselines were evaluated (--no-baselines): the search's best policy on {self.score}."
        if self.searched is None:
            return f"the search evaluated no policy of its own: the chosen policy is {self.chosen.origin}'s."
        noise = (f"the selection's noise is {100 * self.noise:.2f} points (one policy fine-tuned with 2 seeds)"
                 if self.noise is not None else "noise not measured (no --select)")
        gain = 100 * self.gain
        base = f"{self.baseline.origin.split(':', 1)[1]} ({100 * self.baseline.accuracy:.2f}%)"
        if self.chosen.is_baseline:
            return (f"At this budget the search did not beat the baselines: the chosen policy is "
                    f"{self.chosen.origin}'s ({100 * self.chosen.accuracy:.2f}% on {self.score}); the best searched "
                    f"policy got {100 * self.searched.accuracy:.2f}% ({gain:+.2f} points against {base}); {noise}.")
        if self.paid:
            return (f"The search paid: its policy gets {100 * self.searched.accuracy:.2f}% on {self.score}, "
                    f"{gain:+.2f} points over the best baseline, {base}, more than the noise; {noise}.")
        return (f"The search's policy gets {100 * self.searched.accuracy:.2f}% on {self.score}, {gain:+.2f} points "
                f"over the best baseline, {base}: within the noise, so at this budget the search did not clearly "
                f"beat the baselines; {noise}.")

    def to_dict(self) -> dict[str, Any]:
        def row(r: Record | None) -> dict[str, Any] | None:
            return None if r is None else {"evaluation": r.index, "origin": r.origin, "accuracy": r.accuracy,
                                           "cost_ratio": r.cost_ratio, "rung": r.rung}

        return {"score": self.score, "chosen": row(self.chosen), "searched": row(self.searched),
                "best_baseline": row(self.baseline), "gain": self.gain, "noise": self.noise, "paid": self.paid,
                "text": self.text()}


def finalists(problem: SearchProblem, top_k: int) -> list[Record]:
    """The deploy rung's candidates: the ``top_k`` best distinct candidates that are not baselines (by their
    highest-ranked row: a ladder's verdict first), then every baseline not among them (rung-0 records)."""
    best_row: dict[int, Record] = {}
    for record in [*problem.records, *problem.rescored.values()]:
        if record.index not in best_row or rank(record) > rank(best_row[record.index]):
            best_row[record.index] = record
    by_index = {r.index: r for r in problem.records}
    out, keys = [], set()
    for row in sorted(best_row.values(), key=rank, reverse=True):
        record = by_index[row.index]
        key = problem.key(record.keep)
        if record.is_baseline or key in keys:
            continue
        keys.add(key)
        out.append(record)
        if len(out) == top_k:
            break
    for record in problem.records:
        key = problem.key(record.keep)
        if record.is_baseline and key not in keys:
            keys.add(key)
            out.append(record)
    return out


@dataclass(frozen=True)
class Selection:
    """What the deploy rung did: the winner, the verdict, and the pids of the processes that fine-tuned."""

    best: Record
    verdict: Verdict
    workers: frozenset[int]


def run_selection(problem: SearchProblem, ctx: Context, config: SearchConfig, pool: Any = None,
                  on_result: Callable[[Record], None] | None = None) -> Selection:
    """Fine-tunes the finalists (and the noise repeats) not measured before, records each; returns the winner."""
    from amc.deploy import DeployRecipe

    recipe = DeployRecipe.parse(config.select, samples=config.select_samples, lr=config.select_lr)
    rung = len(config.ladder) + 1
    seed = config.search_seed
    candidates = finalists(problem, config.select_top_k)
    workers = _measure(problem, ctx, pool, recipe, rung, candidates, seed=seed, repeat=0, on_result=on_result)
    scored = [problem.known_rescore(c, rung) for c in candidates]
    winner = max(scored, key=rank)
    others = [r for r in scored if r.is_baseline != winner.is_baseline]
    repeated = [winner] + ([max(others, key=rank)] if others else [])
    by_index = {r.index: r for r in candidates}
    workers |= _measure(problem, ctx, pool, recipe, rung, [by_index[r.index] for r in repeated],
                        seed=seed + NOISE_SEED_OFFSET, repeat=1, on_result=on_result)
    noise = max(abs(problem.known_rescore(by_index[r.index], rung, repeat=1).accuracy - r.accuracy) for r in repeated)
    verdict = make_verdict(scored, winner, noise=noise, score=recipe.label)
    log.info("deploy rung (%s on %d candidates, fine-tuned in %d process(es), pids %s): %s", recipe, len(candidates),
             len(workers), sorted(workers), verdict.text())
    return Selection(best=problem.best, verdict=verdict, workers=frozenset(workers))


def make_verdict(rows: Sequence[Record], chosen: Record, *, noise: float | None, score: str) -> Verdict:
    """The verdict over ``rows`` (one per candidate, all on ``score``)."""
    searched = [r for r in rows if not r.is_baseline]
    baselines = [r for r in rows if r.is_baseline]
    return Verdict(score=score, searched=max(searched, key=rank, default=None),
                   baseline=max(baselines, key=rank, default=None), chosen=chosen, noise=noise)


def search_verdict(problem: SearchProblem) -> Verdict:
    """The verdict without a deploy rung: on the rung the best policy reached, over the candidates scored there."""
    best = problem.best
    rows = problem.records if best.rung == 0 else [r for (_, rung), r in problem.rescored.items() if rung == best.rung]
    sides = {r.is_baseline for r in rows}
    if best.rung and sides != {True, False}:  # the ladder re-scored only one side: compare on the search's score
        rows = problem.records
        best = next(r for r in rows if r.index == best.index)  # the chosen policy, compared on that score
    return make_verdict(rows, best, noise=None, score=best.score or problem.score)


def _measure(problem: SearchProblem, ctx: Context, pool: Any, recipe: DeployRecipe, rung: int,
             candidates: Sequence[Record], *, seed: int, repeat: int,
             on_result: Callable[[Record], None] | None) -> set[int]:
    todo = [c for c in candidates if problem.known_rescore(c, rung, repeat=repeat) is None]
    if not todo:
        return set()

    def record(i: int, result: EvalResult, pid: int) -> None:
        row = problem.record_rescore(todo[i], rung, recipe.label, result, repeat=repeat, pid=pid)
        if on_result is not None:
            on_result(row)

    return run_tasks(ctx, pool, DeployTask(recipe, seed), [problem.policy(c.keep) for c in todo], record)


def deployed_baselines(ctx: Context, problem: SearchProblem, recipe: DeployRecipe, seed: int) -> dict[str, float]:
    """Test accuracy of each baseline after the deploy recipe (the verdict on the test split), each fine-tuned as
    its deploy-rung row was (:class:`DeployTask`'s seeding)."""
    from amc.deploy import deploy_model
    from amc.device import model_device
    from amc.evaluation.metrics import accuracy
    from amc.seeding import seeded

    out = {}
    for record in problem.records:
        if record.is_baseline and record.origin not in out:
            with seeded(seed, model_device(ctx.model)):
                model = deploy_model(ctx, problem.policy(record.keep), recipe, seed=seed)
            out[record.origin] = accuracy(model, ctx.data.test)
    return out


def verdict_rows(verdict: Verdict | None, deployed_test: dict[str, float] | None,
                 select: str | None) -> list[tuple[str, str]]:
    """The report's rows: test accuracy after the deploy recipe (best and baselines) and the verdict."""
    rows = []
    if deployed_test:
        names = " / ".join(k.split(":", 1)[-1] for k in deployed_test)
        rows.append((f"test accuracy after the deploy recipe {select} ({names})",
                     " / ".join(f"{v:.4f}" for v in deployed_test.values())))
    if verdict is not None:
        rows.append(("verdict", verdict.text()))
    return rows


__all__ = ["DeployTask", "deployed_baselines", "verdict_rows", "Selection", "Verdict", "finalists", "make_verdict", "run_selection", "run_tasks",
           "search_verdict"]
