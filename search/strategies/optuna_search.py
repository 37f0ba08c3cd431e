"""``optuna``: one ``suggest_float`` per layer, projected onto the budget by the env's routine.

With ``--depth`` each removable block is first a ``suggest_categorical("drop:<block>", [False, True])`` (in
forward order; a block inside a dropped one is not asked), and only the widths a drop leaves relevant are
suggested: the others keep 1.0 (:func:`amc.pruning.depth.canonical`), so no trial spends an evaluation on
widths that change nothing.

Samplers: ``tpe`` (default), ``cmaes``, ``random``, and ``nsga2`` for a multi-objective run (maximise
accuracy, minimise cost ratio) whose Pareto front goes to ``pareto.json``. The study lives in an Optuna
RDB storage (SQLite in the run folder by default), so an interrupted run resumes where it stopped:
completed trials are kept, and trials that were running when it died are marked failed.

With a ladder (``--ladder``), each trial reports its rung-0 score and each later rung's with
``trial.report`` and Optuna's pruner (:func:`search.ladder.make_pruner`) stops the unpromising ones: they
are PRUNED in the study. A trial that completes every rung has the last rung's score as its value.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna

from amc.errors import ConfigError
from amc.pruning.depth import DepthKeep, irrelevant_decisions
from amc.evaluation.evaluator import Evaluator
from search.history import Record
from search.ladder import make_pruner, rung_evaluators, rung_step
from search.problem import SearchProblem
from search.strategies.base import Strategy, register

if TYPE_CHECKING:
    from amc.context import Context
    from search.config import SearchConfig

log = logging.getLogger(__name__)
STUDY_NAME = "amc-search"

# ``--sampler`` name -> the sampler, given the search seed.
SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=20),
    "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed),
}


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler called ``name`` (a key of :data:`SAMPLERS`), seeded with ``seed``.

    Raises:
        ConfigError: No sampler has that name.
    """
    if name not in SAMPLERS:
        raise ConfigError(f"unknown --sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](seed)


@register
class OptunaStrategy(Strategy):
    """Optuna search over per-layer keep ratios.

    Args:
        max_repeats: A proposal whose projected policy was evaluated before (same channel or weight
            counts: rounding and the budget projection map many raw proposals to one policy) is told
            its known result without spending an evaluation. After ``max_repeats`` such repeats in a
            row the sampler has nothing new to offer, and the next proposals are drawn at random
            (enqueued trials, so the study sees them); after ``2 * max_repeats`` a repeat is evaluated
            (a cache hit) and counted, so a run always ends. TPE otherwise keeps re-proposing its best
            policy once a coarse space (``--round-to 8``) is small, and stops exploring. 0 counts every
            proposal.
    """

    name = "optuna"
    runs_own_ladder = True  # each trial climbs the ladder under Optuna's pruner

    def __init__(self, *, sampler: str = "tpe", storage: str, batch_size: int = 1, out: str | Path | None = None,
                 study_name: str = STUDY_NAME, max_repeats: int = 20, reward: str = "acc",
                 ladder: Sequence[str] = (), rung_evaluators: Sequence[Evaluator] = (),
                 pruner: str = "halving") -> None:
        if len(ladder) != len(rung_evaluators):
            raise ValueError("one evaluator per ladder score")
        if ladder and sampler == "nsga2":
            raise ConfigError("--ladder with --sampler nsga2: Optuna prunes single-objective studies only")
        self.ladder = tuple(ladder)
        self.rung_evaluators = tuple(rung_evaluators)
        self.pruner = pruner
        self.max_repeats = max_repeats
        self.reward = reward  # names the study's objective
        self.sampler = sampler
        self.storage = storage
        self.batch_size = batch_size
        self.out = Path(out) if out is not None else None
        self.study_name = study_name  # one study per run folder, also in a shared RDB storage

    @classmethod
    def from_config(cls, config: SearchConfig, *, out: Path, batch_size: int, ctx: Context) -> OptunaStrategy:
        storage = config.storage or f"sqlite:///{(out / 'study.db').resolve()}"
        ladder: dict = {}
        if config.ladder:
            ladder = dict(ladder=config.ladder, rung_evaluators=rung_evaluators(ctx, config.ladder),
                          pruner=config.pruner)
        return cls(sampler=config.sampler, storage=storage, batch_size=batch_size, out=out,
                   study_name=f"amc-search/{out.resolve().name}", reward=config.reward, **ladder)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The study's objectives: the reward (``val_accuracy`` for ``acc``), and for NSGA-II the cost ratio."""
        first = "val_accuracy" if self.reward == "acc" else self.reward
        return (first, "cost_ratio") if self.sampler == "nsga2" else (first,)

    def load_study(self, seed: int) -> optuna.Study:
        directions = ["maximize", "minimize"] if self.sampler == "nsga2" else ["maximize"]
        sampler = make_sampler(self.sampler, seed)
        pruner = make_pruner(self.pruner, len(self.ladder)) if self.ladder else None
        try:
            study = optuna.create_study(study_name=self.study_name, storage=self.storage, directions=directions,
                                        sampler=sampler, pruner=pruner, load_if_exists=True)
        except (ValueError, ImportError, RuntimeError) as exc:  # bad URL, missing driver, other directions
            raise ConfigError(f"cannot open Optuna study {self.study_name!r} in --storage {self.storage!r}: "
                              f"{exc}; pass a valid RDB URL such as sqlite:///study.db") from exc
        except Exception as exc:  # SQLAlchemy's errors (unreachable database, bad credentials)
            if type(exc).__module__.startswith("sqlalchemy"):
                raise ConfigError(f"cannot open --storage {self.storage!r}: {exc}") from exc
            raise
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and the only way to name objectives
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(self.metric_names))  # optuna-dashboard shows these, not "Objective 0"
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            # Trials of a run that died mid-evaluation: their result never came back.
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        return study

    def run(self, problem: SearchProblem, evaluations: int, *, seed: int) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = self.load_study(seed)
        names = problem.graph.names
        p = problem.projector
        self._sync(study, problem)
        done = len(study.get_trials(deepcopy=False, states=FINISHED))
        known = {problem.key(r.keep): r for r in problem.records}
        rng = np.random.default_rng([seed, len(study.trials)])
        repeats = 0
        remaining = evaluations
        while remaining > 0:
            trials, keeps, batch_keys = [], [], set()
            while len(trials) < min(self.batch_size, remaining):
                trial = study.ask()
                keep = p.project(suggest(trial, problem))
                trial.set_user_attr("keep", list(keep))
                if problem.blocks:
                    trial.set_user_attr("dropped", list(getattr(keep, "dropped", ())))
                key = problem.key(keep)
                if "step" in trial.user_attrs and key not in known:  # an enqueued record projected elsewhere
                    trial.set_user_attr("step", trial.number)
                if (key in known or key in batch_keys) and repeats < 2 * self.max_repeats:
                    if key in known:
                        # Known result, no evaluation spent; an enqueued record of a killed run goes on with its
                        # ladder, a repeat is told its known outcome without feeding the pruner's rungs again.
                        self._finish(study, trial, problem, known[key], repeat="step" not in trial.user_attrs)
                    else:  # proposed twice in this batch; its result is not known yet
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    repeats += 1
                    if repeats >= self.max_repeats:  # the sampler has nothing new: explore at random
                        study.enqueue_trial({f"keep:{n}": float(rng.uniform(p.min_keep, p.max_keep)) for n in names})
                    continue
                repeats = 0
                batch_keys.add(key)
                trials.append(trial)
                keeps.append(keep)
            recorded: dict[int, Record] = {}  # batch position -> record, filled as results arrive
            try:
                problem.evaluate_keeps(keeps, steps=[t.number for t in trials], recorded=recorded)
            finally:
                # Tell every trial whose result was recorded (also when interrupted mid-batch), fail the rest.
                for i, trial in enumerate(trials):
                    record = recorded.get(i)
                    if record is None:
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    else:
                        known.setdefault(problem.key(record.keep), record)
                        self._finish(study, trial, problem, record)
                if self.sampler == "nsga2" and self.out is not None:
                    write_pareto(study, self.out / "pareto.json")
            remaining -= len(trials)
        total = len(study.get_trials(deepcopy=False, states=FINISHED))
        log.info("%d evaluations this run; the study has %d completed trials (%d before this run, repeats of "
                 "evaluated policies included)", evaluations, total, done)

    def _finish(self, study: optuna.Study, trial: optuna.trial.Trial, problem: SearchProblem, record: Record, *,
                repeat: bool = False) -> None:
        """Tells the study the trial's result: its record's, or with a ladder the rungs' through the pruner.

        A rung measured before (a resumed run) is read back, not scored again. A ``repeat`` (a proposal of an
        evaluated policy) is told its known outcome without reports: replayed reports would count again in
        the pruner's rungs, and a rung full of copies of poor values promotes every new trial.
        """
        if not self.ladder:
            study.tell(trial, self._values(record))
            return
        if repeat:
            rungs = problem.rungs(record)
            if len(rungs) == len(self.ladder) + 1:
                study.tell(trial, rungs[-1].reward)
            else:  # it stopped short of the last rung (pruned)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return
        row = record
        trial.report(row.reward, rung_step(0))
        for rung, (score, evaluator) in enumerate(zip(self.ladder, self.rung_evaluators), 1):
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return
            row = problem.rescore(record, rung, score, evaluator)
            trial.report(row.reward, rung_step(rung))
        study.tell(trial, row.reward)

    def _sync(self, study: optuna.Study, problem: SearchProblem) -> None:
        """Adds to the study every recorded evaluation it lacks (a run killed between the two writes).

        With a ladder, an evaluation whose ladder was cut short by the kill is enqueued instead: the next
        trial proposes it again, its rungs so far are read back and its ladder goes on from there.
        """
        finished = {_step(t) for t in study.get_trials(deepcopy=False, states=FINISHED)}
        waiting = {_step(t) for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))}
        missing = [r for r in problem.records if r.step not in finished and r.step not in waiting]
        if not missing:
            return
        for record in missing:
            params, distributions = trial_params(problem, record.keep)
            attrs = {"keep": list(record.keep), "step": record.step}
            if problem.blocks:
                attrs["dropped"] = list(record.dropped)
            rungs = problem.rungs(record)
            if self.ladder and len(rungs) <= len(self.ladder):
                study.enqueue_trial(params, user_attrs=attrs)  # its ladder goes on (nothing scored twice)
                continue
            intermediate = {rung_step(r.rung): r.reward for r in rungs} if self.ladder else None
            values = self._values(rungs[-1])
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                      values=values if self.sampler == "nsga2" else [values],
                                                      intermediate_values=intermediate, user_attrs=attrs))
        log.info("added %d recorded evaluations the study had lost", len(missing))

    def _values(self, record: Record) -> float | list[float]:
        return [record.reward, record.cost_ratio] if self.sampler == "nsga2" else record.reward


def suggest(trial: optuna.trial.Trial, problem: SearchProblem) -> list[float]:
    """A trial's raw proposal: with ``--depth`` the drops first (a :class:`~amc.pruning.depth.DepthKeep`), then
    the widths they leave relevant (the others 1.0); without, one keep ratio per layer."""
    p = problem.projector
    dropped: list[str] = []
    for block in problem.blocks:  # forward order: outer before inner
        if not any(problem_block(problem, d).contains(block.name) for d in dropped):
            if trial.suggest_categorical(f"drop:{block.name}", [False, True]):
                dropped.append(block.name)
    skip = set(irrelevant_decisions(problem.graph, problem.blocks, dropped=dropped)) if dropped else set()
    raw = [1.0 if d in skip else trial.suggest_float(f"keep:{name}", p.min_keep, p.max_keep)
           for d, name in enumerate(problem.graph.names)]
    return DepthKeep(raw, dropped) if dropped else raw  # type: ignore[return-value]


def problem_block(problem: SearchProblem, name: str):
    return next(b for b in problem.blocks if b.name == name)


def trial_params(problem: SearchProblem, keep) -> tuple[dict, dict]:
    """The parameters (and their distributions) of the trial that proposes ``keep`` as :func:`suggest` would."""
    p = problem.projector
    dropped = list(getattr(keep, "dropped", ()))
    params: dict = {}
    distributions: dict = {}
    for block in problem.blocks:
        if not any(problem_block(problem, d).contains(block.name) and d != block.name for d in dropped):
            params[f"drop:{block.name}"] = block.name in dropped
            distributions[f"drop:{block.name}"] = optuna.distributions.CategoricalDistribution([False, True])
    skip = set(irrelevant_decisions(problem.graph, problem.blocks, dropped=dropped)) if dropped else set()
    for d, (name, k) in enumerate(zip(problem.graph.names, keep)):
        if d not in skip:
            params[f"keep:{name}"] = min(max(k, p.min_keep), p.max_keep)
            distributions[f"keep:{name}"] = optuna.distributions.FloatDistribution(p.min_keep, p.max_keep)
    return params, distributions


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # each stands for one record


def _step(trial: optuna.trial.FrozenTrial) -> int:
    """The history step a completed trial stands for: its number, or the step of the record it was re-added
    for (a trial added on resume gets a new number)."""
    return int(trial.user_attrs.get("step", trial.number))


def write_pareto(study: optuna.Study, path: Path) -> None:
    front = [{"trial": t.number, "accuracy": t.values[0], "cost_ratio": t.values[1], "keep": t.user_attrs["keep"]}
             for t in study.best_trials]
    path.write_text(json.dumps(sorted(front, key=lambda r: r["cost_ratio"]), indent=2) + "\n")
