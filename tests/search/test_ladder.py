"""The multi-fidelity ladder on cnn/digits: every rung in history.csv, Optuna's pruner, the winner, resume."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import optuna
import pytest

from amc.context import ContextConfig
from amc.pruning.policy import Policy
from search.config import SearchConfig
from search.history import read_history
from search.ladder import rung_step
from search.runner import run_search
from tests.search.helpers import SEARCH_SCRIPT, kill_search_when, run_script

# One worker runs the module: its search fixtures are shared (make test uses --dist loadgroup).
pytestmark = [pytest.mark.usefixtures("cache_env"), pytest.mark.xdist_group("ladder")]
LADDER = ("finetune:2", "finetune:4")
PRUNED, COMPLETE = optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE


def _config(out: Path, amc_cache: Path, **kwargs) -> SearchConfig:
    settings = dict(budget=0.4, strategy="random", evaluations=10, out=str(out), progress=False, export=False,
                    ladder=LADDER, ladder_top_k=4, context=ContextConfig(cache_dir=str(amc_cache)), baselines=False)
    return SearchConfig(**{**settings, **kwargs})


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name=f"amc-search/{out.name}", storage=f"sqlite:///{out / 'study.db'}")


@pytest.fixture(scope="module")
def laddered(tmp_path_factory, amc_cache):
    """One finished random search with a two-rung ladder after it: (its folder, its SearchResult)."""
    out = tmp_path_factory.mktemp("ladder") / "run"
    return out, run_search(_config(out, amc_cache))


@pytest.fixture(scope="module")
def optuna_laddered(tmp_path_factory, amc_cache):
    """One finished Optuna search whose ladder ran inside the study: (its folder, its SearchResult)."""
    out = tmp_path_factory.mktemp("optuna-ladder") / "run"
    return out, run_search(_config(out, amc_cache, strategy="optuna", evaluations=24))


def test_rungs_re_rank_the_best_candidates_and_the_winner_is_the_policy(laddered) -> None:
    out, result = laddered
    rows = read_history(out / "history.csv")
    search = [r for r in rows if r.rung == 0]
    assert [r.index for r in search] == list(range(10)) and {r.score for r in search} == {"bn"}
    first, second = [r for r in rows if r.rung == 1], [r for r in rows if r.rung == 2]
    assert [r.score for r in first] == ["finetune:2"] * 4 and [r.score for r in second] == ["finetune:4"] * 2
    # Rung 1 re-scores the search's 4 best records; rung 2 the better half of rung 1.
    by_reward = sorted(search, key=lambda r: (-r.reward, r.cost, r.index))
    assert {r.index for r in first} == {r.index for r in by_reward[:4]}
    ranked = sorted(first, key=lambda r: -r.reward)
    assert {r.index for r in second} <= {r.index for r in ranked[:3]}  # ties broken by cost
    for row in first + second:  # a re-score is the same candidate: its keep, cost and step
        origin = search[row.index]
        assert (row.keep, row.cost, row.step) == (origin.keep, origin.cost, origin.step)
    winner = max(second, key=lambda r: r.reward)
    policy = Policy.load(out / "policy.json")
    assert list(policy.keep.values()) == pytest.approx(list(winner.keep))
    assert (result.best.index, result.best.rung) == (winner.index, 2)
    assert policy.meta["evaluations"] == 10  # re-scores are not evaluations
    assert (policy.meta["score"], policy.meta["best_rung"], policy.meta["ladder"]) == ("finetune:4", 2, list(LADDER))
    assert policy.metrics["val_accuracy"] == winner.accuracy
    assert all(r.seconds > 0 and 0 <= r.accuracy <= 1 for r in first + second)


def test_a_killed_ladder_resumes_without_scoring_a_candidate_twice(laddered, tmp_path, amc_cache) -> None:
    out = tmp_path / "run"
    shutil.copytree(laddered[0], out)
    full = read_history(out / "history.csv")
    lines = (out / "history.csv").read_text().splitlines()
    # As a kill leaves it: the header, the 10 evaluations, three re-scores and half of the fourth.
    (out / "history.csv").write_text("\n".join(lines[:14]) + "\n" + lines[14][: len(lines[14]) // 2])
    run_search(_config(out, amc_cache, resume=True))
    again = read_history(out / "history.csv")
    keys = [(r.index, r.rung) for r in again]
    assert len(keys) == len(set(keys)) == len(full)  # each candidate scored once per rung
    assert {(r.index, r.rung): r.accuracy for r in again} == {(r.index, r.rung): r.accuracy for r in full}
    before = (out / "history.csv").read_text()
    run_search(_config(out, amc_cache, resume=True))  # a finished ladder: nothing more to score
    assert (out / "history.csv").read_text() == before
    # Another ladder (or its top-k, or Optuna's pruner) is another search: refused, naming the setting.
    from amc.errors import ConfigError

    for change, name in ((dict(ladder=("finetune:2",)), "ladder"), (dict(ladder_top_k=2), "ladder_top_k"),
                         (dict(pruner="hyperband"), "pruner")):
        with pytest.raises(ConfigError, match=f"different settings \\['{name}'\\]"):
            run_search(_config(out, amc_cache, resume=True, **change))
    assert (out / "history.csv").read_text() == before


def test_optuna_prunes_trials_with_its_pruner_and_history_has_every_rung(optuna_laddered) -> None:
    out, result = optuna_laddered
    rows = read_history(out / "history.csv")
    search = {r.step: r for r in rows if r.rung == 0}
    assert len(search) == 24 and Counter((r.index, r.rung) for r in rows).most_common(1)[0][1] == 1
    trials = {t.number: t for t in _study(out).get_trials(deepcopy=False, states=(PRUNED, COMPLETE))}
    states = Counter(t.state for t in trials.values())
    assert states[PRUNED] > 0 and states[COMPLETE] > 0, states
    # Only evaluated candidates report to the pruner: a repeat of a known policy is told its outcome without
    # reports, so that copies of a value do not crowd a rung.
    assert {n for n, t in trials.items() if t.intermediate_values} <= set(search)
    for step, record in search.items():  # each evaluation's trial: its reports are the candidate's rungs
        trial = trials[step]
        rungs = sorted((r for r in rows if r.index == record.index), key=lambda r: r.rung)
        assert [r.rung for r in rungs] == list(range(len(rungs)))
        assert [r.score for r in rungs] == ["bn", *LADDER][: len(rungs)]
        assert trial.intermediate_values == {rung_step(r.rung): r.reward for r in rungs}
        if trial.state == COMPLETE:
            assert len(rungs) == 3 and trial.value == rungs[-1].reward
        else:
            assert len(rungs) < 3  # pruned before the last rung
    top = [r for r in rows if r.rung == 2]
    winner = max(top, key=lambda r: (r.reward, -r.cost, -r.step))
    assert (result.best.index, result.best.rung) == (winner.index, 2)
    assert list(Policy.load(out / "policy.json").keep.values()) == pytest.approx(list(winner.keep))


def test_a_killed_optuna_ladder_resumes_with_no_candidate_scored_twice(tmp_path, amc_cache) -> None:
    out = tmp_path / "run"
    args = ["--budget", "0.4", "--strategy", "optuna", "--evaluations", "40", "--ladder", ",".join(LADDER),
            "--out", str(out), "--quiet", "--threads", "1", "--no-export",
            "--score", "bn",  # the search's own rung (as in the tests above): 2.5x cheaper than reconstruct
            "--no-baselines", "--select", "none"]  # the ladder's rows only (test_baselines.py: the deploy rung)
    # Killed mid-ladder: a candidate's rung-1 score is written, and several evaluations before it.
    kill_search_when(args, out, amc_cache, lambda rows: len(rows) > 12 and rows[-1].rung == 1,
                     what="a rung-1 row after 12 rows")
    before = (out / "history.csv").read_text().splitlines()
    killed = read_history(out / "history.csv")
    assert sum(r.rung == 0 for r in killed) < 40

    done = run_script(SEARCH_SCRIPT, *args, "--resume", cache=amc_cache)
    assert done.returncode == 0, done.stderr
    assert (out / "history.csv").read_text().splitlines()[: len(before)] == before  # rows before the kill stay
    rows = read_history(out / "history.csv")
    assert sorted(r.index for r in rows if r.rung == 0) == list(range(40))  # none lost, none repeated
    assert Counter((r.index, r.rung) for r in rows).most_common(1)[0][1] == 1  # no candidate scored twice
    # The candidate killed mid-ladder went on from its rung 1 (or its trial was pruned there).
    cut = killed[-1]
    trials = _study(out).get_trials(deepcopy=False, states=(PRUNED, COMPLETE))
    mine = [t for t in trials if int(t.user_attrs.get("step", t.number)) == cut.step]
    assert mine and rung_step(1) in mine[-1].intermediate_values
    assert mine[-1].intermediate_values[rung_step(1)] == cut.reward


def test_hyperband_runs_the_ladder_too_and_refuses_a_pareto_study(tmp_path, amc_cache) -> None:
    from amc.errors import ConfigError

    out = tmp_path / "run"
    result = run_search(_config(out, amc_cache, strategy="optuna", evaluations=12, pruner="hyperband"))
    rows = read_history(out / "history.csv")
    trials = _study(out).get_trials(deepcopy=False, states=(PRUNED, COMPLETE))
    assert sum(r.rung == 0 for r in rows) == 12 and {t.state for t in trials} <= {PRUNED, COMPLETE}
    for trial in trials:  # hyperband's rungs are the same report steps: each trial stopped at one of them
        assert set(trial.intermediate_values) <= {rung_step(r) for r in range(len(LADDER) + 1)}
    assert result.best.rung == max(r.rung for r in rows)
    with pytest.raises(ConfigError, match="unknown --pruner 'asha'"):
        _config(tmp_path / "a", amc_cache, pruner="asha")
    with pytest.raises(ConfigError, match="nsga2: Optuna prunes single-objective studies only"):
        _config(tmp_path / "b", amc_cache, strategy="optuna", sampler="nsga2")
