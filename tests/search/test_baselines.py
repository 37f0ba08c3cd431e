"""Never deploy worse than the free alternatives (issue 31), on cnn/digits: the baselines are the first
candidates of every strategy, warm starts, the deploy rung (resume, Ray workers) and the verdict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from amc.context import ContextConfig
from amc.pruning.policy import Policy
from search.config import SearchConfig
from search.history import read_history
from search.runner import run_search
from search.strategies.base import Strategy, register
from tests.search.helpers import SEARCH_SCRIPT, run_script

pytestmark = [pytest.mark.usefixtures("cache_env"), pytest.mark.xdist_group("baselines")]
BASELINES = ["baseline:uniform", "baseline:tp-global"]


def _config(out: Path, amc_cache: Path, **kwargs) -> SearchConfig:
    settings = dict(budget=0.3, strategy="random", evaluations=4, out=str(out), progress=False, export=False,
                    report=False, context=ContextConfig(cache_dir=str(amc_cache)))
    return SearchConfig(**{**settings, **kwargs})


@pytest.mark.parametrize("strategy", ["optuna", "ddpg", "sensitivity"])  # random: the warm-start test
def test_the_baselines_are_the_first_rows_of_every_strategy(strategy, tmp_path, amc_cache) -> None:
    out = tmp_path / strategy
    result = run_search(_config(out, amc_cache, strategy=strategy, evaluations=3, warmup=1))
    rows = read_history(out / "history.csv")
    assert [r.origin for r in rows[:2]] == BASELINES
    own = 1 if strategy == "sensitivity" else 3
    assert [r.origin for r in rows[2:]] == ["search"] * own  # the baselines come on top of --evaluations
    assert all(r.cost_ratio <= 0.3 + 1e-9 for r in rows)
    assert rows[0].keep == result.uniform.keep  # the run's uniform row is the recorded baseline, not a re-run
    if strategy == "optuna":  # the study knows them: the sampler learns from them as from its own trials
        import optuna

        study = optuna.load_study(study_name=f"amc-search/{out.name}", storage=f"sqlite:///{out / 'study.db'}")
        trials = sorted(study.trials, key=lambda t: t.number)
        assert [t.user_attrs["keep"] for t in trials[:2]] == [list(r.keep) for r in rows[:2]]
        assert [t.value for t in trials[:2]] == [r.reward for r in rows[:2]]
    if strategy == "ddpg":  # demonstrations: the agent's replay buffer starts with the baselines' episodes
        assert "2 baseline and warm-start episodes added to the AMCDDPG agent's replay buffer" in \
            (out / "run.log").read_text()


def test_tp_global_is_a_strategy_of_its_own(tmp_path, amc_cache) -> None:
    out = tmp_path / "tp"
    result = run_search(_config(out, amc_cache, strategy="tp-global", evaluations=5))
    rows = read_history(out / "history.csv")
    assert [r.origin for r in rows] == ["baseline:tp-global"]  # one policy, no other baselines
    assert result.best.cost_ratio <= 0.3 + 1e-9


def test_a_warm_start_from_a_budget_05_run_is_evaluated_first_and_feasible(tmp_path, amc_cache) -> None:
    earlier = tmp_path / "at05"
    run_search(_config(earlier, amc_cache, budget=0.5, evaluations=4, baselines=False))
    out = tmp_path / "at03"
    result = run_search(_config(out, amc_cache, warm_start=(str(earlier),), warm_start_top_k=2, evaluations=2))
    rows = read_history(out / "history.csv")
    warm = [r for r in rows if r.origin.startswith("warm:")]
    assert [r.origin for r in rows[:2]] == BASELINES and rows[2:4] == warm  # right after the baselines
    assert len(warm) == 2 and all(r.origin.startswith("warm:at05#") for r in warm)
    assert all(r.cost_ratio <= 0.3 + 1e-9 for r in warm)
    assert all(r.cost_ratio >= 0.25 for r in warm)  # scaled onto this budget, not left far below it
    starts = result.policy.meta["starts"]
    transferred = [s for s in starts if s["origin"].startswith("warm:")]
    assert [s["budget"] for s in transferred] == [0.5, 0.5]
    assert all(s["source"] == str(earlier) for s in transferred)


def test_a_foreign_warm_start_is_refused_in_one_line(tmp_path, amc_cache) -> None:
    foreign = tmp_path / "policy.json"
    policy = Policy(keep={"features.0": 0.5}, model_fingerprint="0123456789abcdef", granularity="channel",
                    criterion="l1", resource="flops", budget=0.3)
    policy.save(foreign)
    out = tmp_path / "run"
    proc = run_script(SEARCH_SCRIPT, "--budget", "0.3", "--evaluations", "2", "--quiet", "--no-export", "--out",
                      str(out), "--warm-start", str(foreign), cache=amc_cache)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(foreign) in lines[0] and "another model" in lines[0], proc.stderr
    assert not out.exists()  # refused before anything was evaluated


@pytest.fixture(scope="module")
def selected(tmp_path_factory, amc_cache):
    """One random search with the deploy rung: (its folder, its SearchResult)."""
    out = tmp_path_factory.mktemp("select") / "run"
    return out, run_search(_config(out, amc_cache, evaluations=6, select="finetune:1", select_top_k=3,
                                   select_samples=400, report=True))


def test_the_deploy_rung_fine_tunes_the_finalists_and_the_baselines(selected) -> None:
    out, result = selected
    rows = read_history(out / "history.csv")
    deploy = [r for r in rows if r.score == "deploy:finetune:1"]
    main = [r for r in deploy if not r.repeat]
    search_rows = [r for r in rows if r.rung == 0]
    assert {r.origin for r in main} >= set(BASELINES)  # both baselines are finalists
    assert sum(r.origin == "search" for r in main) == 3  # --select-top-k
    assert len({r.index for r in main}) == len(main) == 5
    repeats = [r for r in deploy if r.repeat]
    assert len(repeats) == 2 and {r.index for r in repeats} <= {r.index for r in main}
    # The winner is the best after the fine-tune, and it is the run's policy.
    winner = max(main, key=lambda r: (r.reward, -r.cost, -r.step))
    assert result.best.index == winner.index and result.best.rung == 1
    assert [result.policy.keep[n] for n in result.layer_names] == pytest.approx(list(winner.keep), abs=1e-9)
    assert winner.index in {r.index for r in search_rows}
    verdict = result.policy.meta["verdict"]
    assert verdict["chosen"]["evaluation"] == winner.index
    baseline_best = max((r for r in main if r.is_baseline), key=lambda r: r.accuracy)
    searched_best = max((r for r in main if not r.is_baseline), key=lambda r: r.accuracy)
    assert verdict["gain"] == pytest.approx(searched_best.accuracy - baseline_best.accuracy)
    noise = max(abs(r.accuracy - next(m.accuracy for m in main if m.index == r.index)) for r in repeats)
    assert verdict["noise"] == pytest.approx(noise)
    assert set(result.deployed_test) == {"best", *BASELINES}
    assert "verdict" in (out / "report.html").read_text()


def test_a_killed_deploy_rung_resumes_with_no_candidate_fine_tuned_twice(selected, tmp_path, amc_cache) -> None:
    out = tmp_path / "run"
    shutil.copytree(selected[0], out)
    full = read_history(out / "history.csv")
    lines = (out / "history.csv").read_text().splitlines()
    first_deploy = next(i for i, r in enumerate(full) if r.rung == 1)
    # As a kill leaves it: every evaluation, two deploy-rung rows and half of the third.
    keep = 1 + first_deploy + 2
    (out / "history.csv").write_text("\n".join(lines[:keep]) + "\n" + lines[keep][: len(lines[keep]) // 2])
    run_search(_config(out, amc_cache, evaluations=6, select="finetune:1", select_top_k=3, select_samples=400,
                       resume=True))
    again = read_history(out / "history.csv")
    keys = [(r.index, r.rung, r.repeat) for r in again]
    assert len(keys) == len(set(keys)) == len(full)  # each candidate fine-tuned once (and repeated once)
    kept = {(r.index, r.rung, r.repeat): r.accuracy for r in full[: first_deploy + 2]}
    assert {k: a for k, a in ((k, r.accuracy) for k, r in zip(keys, again)) if k in kept} == kept


class _Weak(Strategy):
    """A deliberately weak strategy: every layer at min_keep (far below the budget), then one layer raised."""

    name = "test-weak"

    @classmethod
    def from_config(cls, config, *, out, batch_size, ctx):
        return cls()

    def run(self, problem, evaluations: int, *, seed: int) -> None:
        p = problem.projector
        keeps = [[p.min_keep] * p.n_layers, [p.min_keep] * (p.n_layers - 1) + [min(1.0, 2 * p.min_keep)]]
        problem.evaluate_keeps([p.project(k) for k in keeps[:evaluations]])


@pytest.fixture
def weak_strategy():
    """``test-weak`` registered for one test (the registry's names stay the product's for the others)."""
    from search.strategies.base import REGISTRY

    register(_Weak)
    yield _Weak.name
    REGISTRY.pop(_Weak.name, None)


def test_a_weak_search_ends_with_a_baseline_and_says_so(weak_strategy, tmp_path, amc_cache) -> None:
    out = tmp_path / "weak"
    result = run_search(_config(out, amc_cache, strategy="test-weak", evaluations=2, budget=0.5,
                                select="finetune:1", select_top_k=2, select_samples=400))
    rows = read_history(out / "history.csv")
    main = [r for r in rows if r.rung == 1 and not r.repeat]
    own, baselines = [r for r in main if r.origin == "search"], [r for r in main if r.is_baseline]
    assert len(own) == 2 and len(baselines) == 2
    assert max(r.accuracy for r in own) < max(r.accuracy for r in baselines)  # the setup: its proposals are worse
    assert result.best.is_baseline and result.policy.meta["origin"] == result.best.origin
    assert "did not beat the baselines" in result.verdict.text()
    assert result.policy.meta["verdict"]["paid"] is False


def test_history_of_an_older_layout_reads_as_search_rows(tmp_path) -> None:
    from search.history import LADDER_COLUMNS, HistoryWriter

    path = tmp_path / "history.csv"
    path.write_text(",".join(LADDER_COLUMNS) + "\n" +
                    '0,random,0,0.5,1.0,10.0,0.3,0.5,0,0.1000,0.000,"[0.5, 0.25]",0,bn\n')
    (record,) = read_history(path)
    assert record.origin == "search" and record.repeat == 0 and not record.is_baseline
    HistoryWriter(path).close()  # a resumed run rewrites it with the current header
    assert path.read_text().splitlines()[0].endswith(",origin,repeat,pid")
    assert read_history(path) == [record]
    assert np.isclose(record.accuracy, 0.5) and json.loads(path.read_text().splitlines()[1].split('"')[1]) == [0.5, 0.25]


def test_demonstrations_are_the_baselines_episodes_with_their_rewards(amc_cache) -> None:
    from amc.evaluation.evaluator import EvalResult
    from envs import BudgetProjector, PruningEnv
    from search.history import Record
    from search.strategies.rl.ddpg import DDPGStrategy
    from search.strategies.rl.strategy import add_demonstrations

    ctx = build_context_once(amc_cache)
    cost = ctx.cost_model()
    projector = BudgetProjector(cost, 0.5)

    def make_env(evaluator) -> PruningEnv:
        return PruningEnv(ctx.graph, cost, evaluator, budget=0.5)

    env = make_env(type("Never", (), {"evaluate": lambda self, p: EvalResult(0.0, 0.0, (), 0.0, 0.0),
                                      "evaluate_many": lambda self, ps: []})())
    agent = DDPGStrategy.build_agent(env, n_layers=len(ctx.graph), warmup_episodes=1, seed=0)
    keeps = [projector.project([0.5] * len(ctx.graph)), projector.project([0.9, 0.3, 0.6, 0.4, 0.5, 0.7])]
    records = [Record(i, "ddpg", i, accuracy=acc, loss=1.0, cost=cost.cost(k), cost_ratio=cost.ratio(k), reward=acc,
                      cached=False, seconds=0.0, wall_time=0.0, keep=tuple(k), origin=origin)
               for i, (k, acc, origin) in enumerate(zip(keeps, (0.9, 0.7), BASELINES))]
    add_demonstrations(agent, make_env, records)
    buffer, n = agent.replay_buffer, len(ctx.graph)
    assert buffer.pos == 2 * n  # one transition per layer of each demonstration
    decoded = [env.keep_of_action(float(a)) for a in buffer.actions[: 2 * n, 0, 0]]
    assert decoded == pytest.approx([*keeps[0], *keeps[1]], abs=1e-6)  # each action is the recorded keep ratio
    # Every transition of an episode carries the episode's recorded reward (AMC's reward buffer).
    assert buffer.rewards[:n, 0] == pytest.approx([0.9] * n) and buffer.rewards[n : 2 * n, 0] == pytest.approx([0.7] * n)
    assert list(buffer.dones[: 2 * n, 0]) == [0.0] * (n - 1) + [1.0] + [0.0] * (n - 1) + [1.0]


def build_context_once(amc_cache: Path):
    from amc.context import build_context

    return build_context(ContextConfig(cache_dir=str(amc_cache)), progress=False)


def test_a_ladder_without_a_baseline_compares_on_the_search_score(tmp_path, amc_cache) -> None:
    out = tmp_path / "ladder"
    result = run_search(_config(out, amc_cache, evaluations=4, ladder=("finetune:2",), ladder_top_k=1))
    assert result.best.rung == 1  # the ladder's one finalist: a baseline or the search's best
    # Either way the verdict compares a baseline with a searched policy on one score: the
    # search's own score when the ladder re-scored one side only (before: "no baselines were evaluated").
    assert result.verdict.baseline is not None and result.verdict.searched is not None
    assert result.verdict.baseline.rung == result.verdict.searched.rung
    assert "no baselines" not in result.verdict.text()
