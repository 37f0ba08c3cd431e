"""Every search strategy end to end on the digits cnn, the AMC DDPG parts, and the baselines."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from amc.context import ContextConfig, build_context
from amc.pruning.policy import Policy
from envs import BudgetProjector, PruningEnv
from search.config import SearchConfig
from search.problem import SearchProblem
from search.runner import run_search
from search.strategies.random_search import random_keep
from search.strategies.rl import ACTOR_LR, CRITIC_LR, EpisodeRewardBuffer, TruncatedNormalNoise, build_agent
from search.strategies.uniform import uniform_keep
from tests.search.helpers import history_rows

torch.set_num_threads(1)
pytestmark = pytest.mark.usefixtures("cache_env")

BUDGET = 0.3
MIN_KEEP, MAX_KEEP = 0.2, 1.0
EVALUATIONS = 12
METRICS = ("val_accuracy", "test_accuracy", "cost", "base_cost", "cost_ratio")
META = ("strategy", "seed", "evaluations", "duration_s", "versions")


def _search(out: Path, context_config: ContextConfig, **kwargs) -> Path:
    config = SearchConfig(**{**dict(budget=BUDGET, evaluations=EVALUATIONS, warmup=4, out=str(out), progress=False,
                                     context=context_config, baselines=False), **kwargs})
    result = run_search(config)
    assert result.out == out and not result.interrupted
    return out


def _check_run(out: Path, *, strategy: str, rows_expected: int) -> list[dict[str, str]]:
    rows = history_rows(out / "history.csv")
    assert len(rows) == rows_expected
    assert [int(r["index"]) for r in rows] == list(range(rows_expected))
    assert {r["strategy"] for r in rows} == {strategy}
    for row in rows:
        assert float(row["cost_ratio"]) <= BUDGET + 1e-9, row
        keep = json.loads(row["keep"])
        assert len(keep) == 6  # the digits cnn has six prunable layer groups
        assert all(MIN_KEEP - 1e-9 <= k <= MAX_KEEP + 1e-9 for k in keep), row

    policy = Policy.load(out / "policy.json")
    assert set(METRICS) <= set(policy.metrics)
    assert set(META) <= set(policy.meta)
    assert policy.meta["strategy"] == strategy
    assert policy.meta["seed"] == 0
    assert policy.meta["evaluations"] == rows_expected
    assert policy.meta["duration_s"] > 0
    assert "torch" in policy.meta["versions"]
    assert policy.budget == BUDGET
    assert policy.metrics["val_accuracy"] == max(float(r["accuracy"]) for r in rows)
    assert policy.metrics["cost_ratio"] <= BUDGET + 1e-9
    assert policy.metrics["cost"] == pytest.approx(policy.metrics["cost_ratio"] * policy.metrics["base_cost"])
    assert 0.0 <= policy.metrics["test_accuracy"] <= 1.0
    # The best row's keep ratios are the policy's.
    best = max(rows, key=lambda r: float(r["accuracy"]))
    assert json.loads(best["keep"]) == pytest.approx(list(policy.keep.values()))
    assert (out / "pruned.pt2").stat().st_size > 0
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return rows


@pytest.mark.parametrize("strategy", ["uniform", "random", "optuna", "ddpg", "td3", "sac"])
def test_strategy_writes_a_feasible_best_policy(strategy: str, tmp_path: Path, context_config: ContextConfig,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where SB3's default logger makes its folders
    out = _search(tmp_path / "run", context_config, strategy=strategy)
    assert not list(scratch.glob("SB3-*"))  # the agents log nowhere: no empty folder per search in /tmp
    rows = _check_run(out, strategy=strategy, rows_expected=1 if strategy == "uniform" else EVALUATIONS)
    if strategy == "uniform":
        assert len(set(json.loads(rows[0]["keep"]))) == 1
    else:
        # A search explores: not every evaluated policy is the same.
        assert len({r["keep"] for r in rows}) > 1


@pytest.mark.parametrize("sampler", ["cmaes", "random", "nsga2"])
def test_optuna_samplers(sampler: str, tmp_path: Path, context_config: ContextConfig) -> None:
    out = _search(tmp_path / "run", context_config, strategy="optuna", sampler=sampler)
    rows = _check_run(out, strategy="optuna", rows_expected=EVALUATIONS)
    assert Policy.load(out / "policy.json").meta["sampler"] == sampler
    assert (out / "study.db").exists()
    import optuna

    storage = f"sqlite:///{out / 'study.db'}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    # optuna-dashboard labels the objectives with these instead of "Objective 0".
    assert study.metric_names == (["val_accuracy", "cost_ratio"] if sampler == "nsga2" else ["val_accuracy"])
    if sampler != "nsga2":
        assert not (out / "pareto.json").exists()
        return
    front = json.loads((out / "pareto.json").read_text())
    assert isinstance(front, list) and front
    evaluated = {(float(r["accuracy"]), float(r["cost_ratio"])) for r in rows}
    for entry in front:
        assert {"accuracy", "cost_ratio", "keep"} <= set(entry)
        assert (entry["accuracy"], entry["cost_ratio"]) in evaluated
        assert len(entry["keep"]) == 6
        # Pareto-optimal: no evaluated policy is at least as accurate and cheaper, or more accurate and as cheap.
        for acc, ratio in evaluated:
            assert not (acc >= entry["accuracy"] and ratio <= entry["cost_ratio"]
                        and (acc, ratio) != (entry["accuracy"], entry["cost_ratio"]))


# --- AMC DDPG parts -------------------------------------------------------------------------------

def _buffer(size: int = 64) -> EpisodeRewardBuffer:
    obs_space = gym.spaces.Box(0.0, 1.0, (3,), np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    return EpisodeRewardBuffer(size, obs_space, act_space, device="cpu", n_envs=1)


def _add_episode(buffer: EpisodeRewardBuffer, rewards: list[float]) -> None:
    for i, reward in enumerate(rewards):
        done = i == len(rewards) - 1
        buffer.add(np.full((1, 3), i / 10, np.float32), np.full((1, 3), (i + 1) / 10, np.float32),
                   np.zeros((1, 1), np.float32), np.array([reward], np.float32), np.array([done]), [{}])


def test_episode_reward_buffer_spreads_the_final_reward() -> None:
    buffer = _buffer()
    _add_episode(buffer, [0.0, 0.0, 5.0])
    assert buffer.rewards[:3, 0].tolist() == [5.0, 5.0, 5.0]
    _add_episode(buffer, [0.0, 1.0])  # the intermediate reward is replaced too
    assert buffer.rewards[:5, 0].tolist() == [5.0, 5.0, 5.0, 1.0, 1.0]
    assert buffer.dones[:5, 0].tolist() == [0, 0, 1, 0, 1]


def test_episode_reward_buffer_subtracts_a_moving_average_baseline() -> None:
    buffer = _buffer()
    _add_episode(buffer, [0.0, 0.0, 5.0])
    _add_episode(buffer, [0.0, 0.0, 1.0])
    np.random.seed(0)  # ReplayBuffer.sample draws indices from numpy's global generator

    first = buffer.sample(32)
    raw1 = first.rewards.numpy() + buffer.baseline
    assert set(np.round(raw1, 5).ravel().tolist()) <= {5.0, 1.0}
    assert len(set(np.round(raw1, 5).ravel().tolist())) == 2  # the batch mixes both episodes
    assert buffer.baseline == pytest.approx(float(raw1.mean()))  # first sample: the batch mean
    assert float(first.rewards.mean()) == pytest.approx(0.0, abs=1e-6)

    baseline1 = buffer.baseline
    second = buffer.sample(32)
    raw2 = second.rewards.numpy() + buffer.baseline
    assert set(np.round(raw2, 5).ravel().tolist()) <= {5.0, 1.0}
    assert buffer.baseline == pytest.approx(baseline1 + 0.5 * (float(raw2.mean()) - baseline1))


@pytest.mark.parametrize("mean", [-0.99, -0.9, 0.0, 0.9, 0.99])
def test_truncated_normal_noise_stays_in_the_action_range(mean: float) -> None:
    noise = TruncatedNormalNoise(sigma=1.0, seed=0)
    samples = noise.sample_around(np.full(10_000, mean))
    assert samples.dtype == np.float32 and samples.shape == (10_000,)
    assert samples.min() >= -1.0 and samples.max() <= 1.0
    assert samples.std() > 0.2  # still explores, even at the edge


def test_truncated_normal_noise_has_the_requested_sigma() -> None:
    noise = TruncatedNormalNoise(sigma=0.1, seed=0)
    samples = noise.sample_around(np.zeros(10_000))
    assert abs(float(samples.mean())) < 0.005
    assert float(samples.std()) == pytest.approx(0.1, rel=0.05)
    wide = TruncatedNormalNoise(sigma=1.0, seed=0).sample_around(np.zeros(10_000))
    assert float(wide.std()) < 1 / np.sqrt(3) + 0.02  # truncated to [-1, 1]: at most the uniform's std


def test_truncated_normal_noise_decays_after_warmup() -> None:
    noise = TruncatedNormalNoise(sigma=1.0, decay=0.95, warmup_episodes=3, seed=0)
    noise.reset()  # SB3's learn() resets the noise once before the first step: not an episode end
    assert noise.sigma == 1.0 and noise.episodes == 0
    for _ in range(3):
        noise.reset()
        assert noise.sigma == 1.0
    noise.reset()
    assert noise.sigma == pytest.approx(0.95)
    noise.reset()
    assert noise.sigma == pytest.approx(0.95**2)


def _linear_widths(module: nn.Module) -> list[int]:
    return [m.out_features for m in module.modules() if isinstance(m, nn.Linear)]


def test_build_agent_ddpg_is_configured_as_amc(context_config: ContextConfig) -> None:
    ctx = build_context(context_config, progress=False)
    cost = ctx.cost_model()
    projector = BudgetProjector(cost, BUDGET)
    problem = SearchProblem(graph=ctx.graph, cost_model=cost, projector=projector, evaluator=ctx.evaluator,
                            history=None, strategy="ddpg")
    env = PruningEnv(ctx.graph, cost, problem, budget=BUDGET)
    n_layers = len(ctx.graph)
    agent = build_agent("ddpg", env, n_layers=n_layers, warmup_episodes=2, seed=0)

    assert _linear_widths(agent.actor) == [300, 300, 1]
    assert _linear_widths(agent.critic) == [300, 300, 1]  # DDPG: one critic
    assert agent.tau == 0.01 and agent.gamma == 1.0 and agent.batch_size == 64
    assert isinstance(agent.replay_buffer, EpisodeRewardBuffer)
    assert agent.replay_buffer.buffer_size == 100 * n_layers
    assert agent.learning_starts == 2 * n_layers
    assert isinstance(agent.action_noise, TruncatedNormalNoise)

    agent.learn(total_timesteps=4 * n_layers)  # two warm-up episodes, then two trained ones
    assert problem.count == 4
    assert [g["lr"] for g in agent.actor.optimizer.param_groups] == [ACTOR_LR] == [1e-4]
    assert [g["lr"] for g in agent.critic.optimizer.param_groups] == [CRITIC_LR] == [1e-3]
    assert all(r.cost_ratio <= BUDGET + 1e-9 for r in problem.records)


def test_ddpg_exploration_starts_at_full_sigma_after_warmup(context_config: ContextConfig) -> None:
    """AMC: the k-th episode after the warm-up explores with sigma * 0.95**k (k = 0, 1, ...)."""
    ctx = build_context(context_config, progress=False)
    cost = ctx.cost_model()
    problem = SearchProblem(graph=ctx.graph, cost_model=cost, projector=BudgetProjector(cost, BUDGET),
                            evaluator=ctx.evaluator, history=None, strategy="ddpg")
    agent = build_agent("ddpg", PruningEnv(ctx.graph, cost, problem, budget=BUDGET), n_layers=len(ctx.graph),
                        warmup_episodes=2, seed=0)
    noise = agent.action_noise
    sample_around = noise.sample_around
    used: set[tuple[int, float]] = set()

    def recording(mean: np.ndarray) -> np.ndarray:
        used.add((problem.count, round(noise.sigma, 9)))  # (episode, sigma)
        return sample_around(mean)

    noise.sample_around = recording
    agent.learn(total_timesteps=5 * len(ctx.graph))
    assert sorted(used) == [(2, 1.0), (3, 0.95), (4, round(0.95**2, 9))]


# --- baselines ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_context(amc_cache: Path):
    return build_context(ContextConfig(cache_dir=str(amc_cache)), progress=False)


def _problem(ctx, budget: float) -> SearchProblem:
    cost = ctx.cost_model()
    return SearchProblem(graph=ctx.graph, cost_model=cost, projector=BudgetProjector(cost, budget),
                         evaluator=ctx.evaluator, history=None, strategy="test")


@pytest.mark.parametrize("budget", [0.15, 0.3, 0.5, 0.9, 1.0])
def test_uniform_keep_is_the_largest_feasible_uniform_ratio(base_context, budget: float) -> None:
    problem = _problem(base_context, budget)
    keep = uniform_keep(problem)
    assert len(keep) == len(base_context.graph)
    assert len(set(keep)) == 1
    assert problem.projector.feasible(keep)
    assert problem.cost_model.ratio(keep) <= budget + 1e-9
    ratio = keep[0]
    if ratio < MAX_KEEP:
        assert not problem.projector.feasible([min(ratio + 1e-6, 1.0)] * len(keep))
    else:
        assert budget == 1.0


@pytest.mark.parametrize("budget", [0.3, 0.5])
def test_random_keep_is_feasible_and_uses_the_budget(base_context, budget: float) -> None:
    problem = _problem(base_context, budget)
    keeps = [random_keep(problem, np.random.default_rng([0, i])) for i in range(20)]
    for keep in keeps:
        assert problem.projector.feasible(keep)
        assert all(MIN_KEEP - 1e-9 <= k <= MAX_KEEP + 1e-9 for k in keep)
        assert 0.9 * budget <= problem.cost_model.ratio(keep) <= budget + 1e-9
    assert len({tuple(k) for k in keeps}) == len(keeps)
    # Same generator seed, same policy: a resumed random search draws what it had not reached.
    assert random_keep(problem, np.random.default_rng([0, 3])) == keeps[3]


def test_shared_noise_gives_each_environment_its_own_draw_and_counts_every_episode() -> None:
    from search.strategies.rl import SharedNoise

    noise = SharedNoise(TruncatedNormalNoise(sigma=0.5, warmup_episodes=0, seed=0), n_envs=3)
    draws = noise.base_noise.sample_around(np.zeros((3, 1)))
    assert draws.shape == (3, 1) and len({float(d) for d in draws.ravel()}) == 3
    noise.reset()  # SB3's learn-start reset
    noise.reset(indices=[0, 1, 2])  # three episodes ended
    assert noise.base_noise.episodes == 3
    assert noise.base_noise.sigma == pytest.approx(0.5 * 0.95**3)


@pytest.mark.slow
def test_optuna_spends_evaluations_on_new_policies_in_a_coarse_space(amc_cache: Path, tmp_path: Path) -> None:
    """With round_to 8 many proposals project onto one policy; those repeats are told their known result
    instead of being evaluated again, so TPE keeps exploring (max_repeats=0 shows the waste)."""
    from search.strategies.optuna_search import OptunaStrategy

    ctx = build_context(ContextConfig(cache_dir=str(amc_cache), round_to=8), progress=False)
    distinct = {}
    for repeats in (0, 20):
        problem = _problem(ctx, 0.3)
        strategy = OptunaStrategy(storage=f"sqlite:///{tmp_path / f'study{repeats}.db'}", max_repeats=repeats)
        strategy.run(problem, 30, seed=0)
        assert len(problem.records) == 30
        assert all(problem.projector.feasible(r.keep) for r in problem.records)
        distinct[repeats] = len({ctx.graph.channels(r.keep) for r in problem.records})
        study = strategy.load_study(0)
        told = [t for t in study.trials if t.state.name == "COMPLETE"]
        assert len(told) >= 30 and {r.step for r in problem.records} <= {t.number for t in told}
    assert distinct[20] == 30  # every evaluation a new model
    assert distinct[0] < 25  # without skipping, TPE re-proposes what it has seen


def test_optuna_resync_adds_a_lost_record_once(base_context, tmp_path: Path) -> None:
    """A record written before a kill but never told to the study is re-added on resume, once."""
    import dataclasses

    import optuna

    from search.strategies.optuna_search import OptunaStrategy

    problem = _problem(base_context, 0.5)
    strategy = OptunaStrategy(storage=f"sqlite:///{tmp_path / 'study.db'}")
    strategy.run(problem, 4, seed=0)
    lost = dataclasses.replace(problem.records[-1], index=4, step=99)  # its trial died with the process
    problem.records.append(lost)

    def completed():
        return strategy.load_study(0).get_trials(states=(optuna.trial.TrialState.COMPLETE,))

    before = len(completed())
    for _ in range(2):  # a second resume finds nothing missing
        strategy._sync(strategy.load_study(0), problem)
        assert len(completed()) == before + 1
    assert {r.step for r in problem.records} <= {int(t.user_attrs.get("step", t.number)) for t in completed()}
