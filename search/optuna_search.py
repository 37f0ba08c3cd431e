"""Optuna strategy: one ``suggest_float`` per layer, projected onto the budget by the env's routine.

Samplers: ``tpe`` (default), ``cmaes``, ``random``, and ``nsga2`` for a multi-objective run (maximise
accuracy, minimise cost ratio) whose Pareto front goes to ``pareto.json``. The study lives in an Optuna
RDB storage (SQLite in the run folder by default), so an interrupted run resumes where it stopped:
completed trials are kept, and trials that were running when it died are marked failed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import optuna

from search.problem import SearchProblem

log = logging.getLogger(__name__)
STUDY_NAME = "amc-search"


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=20)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")


class OptunaStrategy:
    name = "optuna"

    def __init__(self, *, sampler: str = "tpe", storage: str, batch_size: int = 1, out: str | Path | None = None) -> None:
        self.sampler = sampler
        self.storage = storage
        self.batch_size = batch_size
        self.out = Path(out) if out is not None else None

    def load_study(self, seed: int) -> optuna.Study:
        directions = ["maximize", "minimize"] if self.sampler == "nsga2" else ["maximize"]
        study = optuna.create_study(study_name=STUDY_NAME, storage=self.storage, directions=directions,
                                    sampler=make_sampler(self.sampler, seed), load_if_exists=True)
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            # Trials of a run that died mid-evaluation: their result never came back.
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        return study

    def run(self, problem: SearchProblem, evaluations: int, *, seed: int) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = self.load_study(seed)
        done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        # history.csv and the study agree on what finished; resume from the smaller count.
        remaining = evaluations
        names = problem.graph.names
        p = problem.projector
        while remaining > 0:
            trials = [study.ask() for _ in range(min(self.batch_size, remaining))]
            keeps = []
            for trial in trials:
                raw = [trial.suggest_float(f"keep:{name}", p.min_keep, p.max_keep) for name in names]
                keep = p.project(raw)
                trial.set_user_attr("keep", keep)
                keeps.append(keep)
            try:
                records = problem.evaluate_keeps(keeps, steps=[t.number for t in trials])
            except BaseException:
                for trial in trials:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            for trial, record in zip(trials, records):
                values = [record.reward, record.cost_ratio] if self.sampler == "nsga2" else record.reward
                study.tell(trial, values)
            remaining -= len(trials)
        log.info("study has %d completed trials (%d before this run)", done + evaluations, done)
        if self.sampler == "nsga2" and self.out is not None:
            write_pareto(study, self.out / "pareto.json")


def write_pareto(study: optuna.Study, path: Path) -> None:
    front = [{"trial": t.number, "accuracy": t.values[0], "cost_ratio": t.values[1], "keep": t.user_attrs["keep"]}
             for t in study.best_trials]
    path.write_text(json.dumps(sorted(front, key=lambda r: r["cost_ratio"]), indent=2) + "\n")
