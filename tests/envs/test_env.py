"""The pruning environment: Gymnasium/SB3 contract, registration, observations, episodes and bad input."""

from __future__ import annotations

import dataclasses
import warnings

import gymnasium
import numpy as np
import pytest
import stable_baselines3.common.env_checker as sb3_checker
from gymnasium.utils import env_checker as gym_checker

import envs
from amc.cost.analytic import FlopsCost, ParamsCost
from amc.errors import ConfigError
from amc.evaluation.evaluator import EvalResult, PolicyEvaluator
from amc.pruning.policy import Policy
from amc.train import TrainConfig
from envs import ENV_ID, OBS_FEATURES, REWARDS, PruningEnv
from tests.envs.conftest import MODEL_NAMES, TINY_EVAL, StubEvaluator

REDUCED, PREV_ACTION = OBS_FEATURES.index("reduced"), OBS_FEATURES.index("prev_action")


def _run(env: gymnasium.Env, actions: np.ndarray, *, seed: int | None = None) -> tuple[list, list, list]:
    """(observations incl. the reset one, rewards, step tuples' (terminated, truncated, info))."""
    obs, _ = env.reset(seed=seed)
    observations, rewards, ends = [obs], [], []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        ends.append((terminated, truncated, info))
    return observations, rewards, ends


def _registered_env(graph, cost_model, evaluator, **kwargs) -> PruningEnv:
    """The env built through the registry: it has a spec, so the checkers can test everything they know."""
    env = gymnasium.make(ENV_ID, graph=graph, cost_model=cost_model, evaluator=evaluator, **kwargs)
    assert env.spec.id == ENV_ID
    return env.unwrapped


# ---------------------------------------------------------------- acceptance 1: the checkers


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gymnasium_and_sb3_checkers_pass_without_warnings(name, model_graph, real_evaluator) -> None:
    _, graph = model_graph(name)
    evaluator = real_evaluator(name)
    env = _registered_env(graph, FlopsCost(graph), evaluator, budget=0.5)
    assert isinstance(env, PruningEnv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_checker.check_env(env)
        sb3_checker.check_env(env)
    # Only DeprecationWarnings raised from inside torch_pruning are tolerated; none come from our code.
    relevant = [w for w in caught
                if not (issubclass(w.category, DeprecationWarning) and "torch_pruning" in w.filename)]
    assert relevant == [], [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in relevant]
    # And a whole episode runs through the real evaluator (a pruned copy, measured accuracy).
    _, rewards, ends = _run(env, [env.action_space.sample() for _ in range(len(graph))], seed=0)
    info = ends[-1][2]
    assert ends[-1][0] and info["cost_ratio"] <= 0.5
    assert rewards[-1] == info["accuracy"] == evaluator.evaluate(info["keep"]).accuracy
    assert 0.0 <= info["accuracy"] <= 1.0


def test_weight_granularity_env_passes_the_checkers(model_graph, digits_as) -> None:
    model, graph = model_graph("cnn")
    config = dataclasses.replace(TINY_EVAL, granularity="weight")
    evaluator = PolicyEvaluator(model, graph, digits_as(graph.input_shape), config)
    env = _registered_env(graph, FlopsCost(graph, granularity="weight"), evaluator, budget=0.5,
                          granularity="weight")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_checker.check_env(env)
        sb3_checker.check_env(env)
    assert [str(w.message) for w in caught] == []


def test_make_env_from_names_sets_the_episode_limit_to_the_layer_count(tmp_path, model_graph) -> None:
    # One epoch of training: the test is about the wiring, not the base model's accuracy.
    env = envs.make_env(model="cnn", dataset="digits", budget=0.3, cache_dir=str(tmp_path),
                        train=TrainConfig(epochs=1))
    inner = env.unwrapped
    assert isinstance(inner, PruningEnv)
    assert env.spec.id == ENV_ID == "amc/ChannelPruning-v0"
    assert env.spec.max_episode_steps == len(inner.graph) == inner.n_layers
    assert len(inner.graph) == len(model_graph("cnn")[1])  # the cnn's 6 decisions on 1x8x8 digits
    assert inner.budget == 0.3 and inner.reward_name == "acc" and inner.clip
    assert list(tmp_path.glob("cnn-*.pt")), "the trained base model was not cached in cache_dir"
    _, rewards, ends = _run(env, [np.array([1.0], dtype=np.float32)] * len(inner.graph), seed=0)
    terminated, _, info = ends[-1]
    assert terminated and not any(t for t, _, _ in ends[:-1])
    assert info["cost_ratio"] <= 0.3
    assert rewards[-1] == info["accuracy"] and 0.0 <= info["accuracy"] <= 1.0


def test_gymnasium_make_from_parts(model_graph) -> None:
    _, graph = model_graph("cnn")
    env = gymnasium.make(ENV_ID, graph=graph, cost_model=FlopsCost(graph), evaluator=StubEvaluator(), budget=0.5,
                         max_episode_steps=len(graph))
    assert env.spec.max_episode_steps == len(graph)
    assert env.unwrapped.graph is graph and env.unwrapped.budget == 0.5
    obs, info = env.reset(seed=3)
    assert obs.shape == (12,) and info == {}


# ---------------------------------------------------------------- determinism


def test_same_seed_same_actions_give_identical_episodes(model_graph, digits_as) -> None:
    model, graph = model_graph("resnet20")
    rng = np.random.default_rng(7)
    actions = rng.uniform(-1, 1, size=(2, len(graph), 1)).astype(np.float32)
    runs = []
    for _ in range(2):  # two envs, each with its own evaluator (no shared cache)
        evaluator = PolicyEvaluator(model, graph, digits_as(graph.input_shape), TINY_EVAL)
        env = PruningEnv(graph, FlopsCost(graph), evaluator, budget=0.4)
        runs.append([_run(env, episode, seed=11) for episode in actions])
    for (obs_a, rew_a, ends_a), (obs_b, rew_b, ends_b) in zip(*runs):
        assert all(np.array_equal(a, b) for a, b in zip(obs_a, obs_b))
        assert rew_a == rew_b
        assert ends_a[-1][2]["keep"] == ends_b[-1][2]["keep"]
        assert ends_a[-1][2]["accuracy"] == ends_b[-1][2]["accuracy"]
    # The two episodes differ from each other, so the comparison above is not vacuous.
    assert runs[0][0][2][-1][2]["keep"] != runs[0][1][2][-1][2]["keep"]


# ---------------------------------------------------------------- observations


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_observation_layout_and_dynamic_features(name, model_graph) -> None:
    _, graph = model_graph(name)
    cost = FlopsCost(graph)
    env = PruningEnv(graph, cost, StubEvaluator(), budget=0.3)
    n = len(graph)
    rng = np.random.default_rng(0)
    for episode in range(5):
        actions = rng.uniform(-1, 1, size=(n, 1)).astype(np.float32)
        observations, _, ends = _run(env, actions, seed=episode)
        keep = ends[-1][2]["keep"]
        for t, obs in enumerate(observations[:-1]):  # the last one is the terminal observation
            assert obs.dtype == np.float32 and obs.shape == (12,) == env.observation_space.shape
            assert env.observation_space.contains(obs)
            assert obs.min() >= 0.0 and obs.max() <= 1.0
            assert obs[0] == np.float32(t / (n - 1))
            # prev_action is the keep ratio the env applied (after clipping), 1 before the first step.
            assert obs[PREV_ACTION] == np.float32(keep[t - 1] if t else 1.0)
            decided = keep[:t] + [1.0] * (n - t)
            assert obs[REDUCED] == pytest.approx(1.0 - cost.cost(decided) / cost.base, abs=1e-6)
        assert observations[0][REDUCED] == 0.0
        assert env.observation_space.contains(observations[-1])


def test_reduced_feature_grows_with_every_pruned_layer(model_graph) -> None:
    _, graph = model_graph("resnet56")
    env = PruningEnv(graph, FlopsCost(graph), StubEvaluator(), budget=0.5)
    observations, _, _ = _run(env, [np.array([-1.0], dtype=np.float32)] * len(graph))
    reduced = [float(o[REDUCED]) for o in observations[:-1]]
    assert reduced[0] == 0.0
    assert all(b > a for a, b in zip(reduced, reduced[1:])), reduced
    # Keeping every channel removes nothing.
    observations, _, _ = _run(PruningEnv(graph, FlopsCost(graph), StubEvaluator(), budget=1.0),
                              [np.array([1.0], dtype=np.float32)] * len(graph))
    assert all(o[REDUCED] == 0.0 for o in observations[:-1])


# ---------------------------------------------------------------- episodes


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_episode_ends_after_the_last_layer_with_the_evaluated_policy(name, model_graph) -> None:
    _, graph = model_graph(name)
    cost = FlopsCost(graph)
    evaluator = StubEvaluator(accuracy=0.625)
    env = PruningEnv(graph, cost, evaluator, budget=0.4)
    actions = np.random.default_rng(1).uniform(-1, 1, size=(len(graph), 1)).astype(np.float32)
    _, rewards, ends = _run(env, actions, seed=0)
    assert len(ends) == len(graph)
    assert rewards[:-1] == [0.0] * (len(graph) - 1)
    assert [t for t, _, _ in ends] == [False] * (len(graph) - 1) + [True]
    assert not any(truncated for _, truncated, _ in ends)
    assert all(info == {} for _, _, info in ends[:-1])
    info = ends[-1][2]
    assert set(info) >= {"policy", "accuracy", "cost", "base_cost", "cost_ratio", "keep", "eval"}
    policy = info["policy"]
    assert isinstance(policy, Policy)
    assert list(policy.keep) == list(graph.names)
    assert policy.ratios(graph) == info["keep"]
    assert policy.channels == dict(zip(graph.names, graph.channels(info["keep"])))
    assert (policy.budget, policy.resource, policy.granularity, policy.criterion) == (0.4, "flops", "channel", "l1")
    assert policy.model_fingerprint == graph.fingerprint
    assert evaluator.seen == [policy]  # evaluated exactly once, at the last step
    assert info["accuracy"] == 0.625 == rewards[-1]
    assert isinstance(info["eval"], EvalResult)
    assert info["cost"] == cost.cost(info["keep"]) and info["base_cost"] == cost.base
    assert info["cost_ratio"] == info["cost"] / cost.base <= 0.4
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0.0], dtype=np.float32))
    # reset() starts a fresh episode of the same length.
    _, _, ends = _run(env, actions, seed=0)
    assert [t for t, _, _ in ends] == [False] * (len(graph) - 1) + [True]
    assert ends[-1][2]["keep"] == info["keep"]


def test_real_evaluator_reward_is_the_measured_accuracy(model_graph, real_evaluator) -> None:
    _, graph = model_graph("cnn")
    evaluator = real_evaluator("cnn")
    env = PruningEnv(graph, FlopsCost(graph), evaluator, budget=0.5)
    _, rewards, ends = _run(env, [np.array([0.0], dtype=np.float32)] * len(graph))
    info = ends[-1][2]
    expected = evaluator.evaluate(info["keep"])
    assert rewards[-1] == info["accuracy"] == expected.accuracy
    assert info["eval"].key == expected.key == graph.channels(info["keep"])


# ---------------------------------------------------------------- acceptance 5: bad input


@pytest.fixture(scope="module")
def cnn_parts(model_graph):
    _, graph = model_graph("cnn")
    return graph, FlopsCost(graph)


@pytest.mark.parametrize("budget", [0, -0.1, 1.5, float("nan"), "abc", None, True])
def test_bad_budget_is_a_config_error_naming_the_value(budget, cnn_parts) -> None:
    graph, cost = cnn_parts
    with pytest.raises(ConfigError) as err:
        PruningEnv(graph, cost, StubEvaluator(), budget=budget)
    assert repr(budget) in str(err.value)


def test_min_keep_above_max_keep_names_both(cnn_parts) -> None:
    graph, cost = cnn_parts
    with pytest.raises(ConfigError) as err:
        PruningEnv(graph, cost, StubEvaluator(), budget=0.5, min_keep=0.8, max_keep=0.5)
    assert "0.8" in str(err.value) and "0.5" in str(err.value)
    assert "min_keep" in str(err.value) and "max_keep" in str(err.value)


@pytest.mark.parametrize("field, value", [("min_keep", 0), ("min_keep", 1.5), ("min_keep", -0.2),
                                          ("min_keep", float("nan")), ("max_keep", 0), ("max_keep", 1.5)])
def test_keep_range_outside_0_1_is_a_config_error(field, value, cnn_parts) -> None:
    graph, cost = cnn_parts
    with pytest.raises(ConfigError) as err:
        PruningEnv(graph, cost, StubEvaluator(), budget=0.5, **{field: value})
    assert field in str(err.value) and repr(value) in str(err.value)


@pytest.mark.parametrize("action", [np.array([1.5]), np.array([-2.0]), np.array([np.nan]), np.array([np.inf]),
                                    np.array([0.1, 0.2]), np.array([[0.5], [0.5]]), 3.0])
def test_action_outside_the_space_is_a_value_error_naming_it(action, cnn_parts) -> None:
    graph, cost = cnn_parts
    env = PruningEnv(graph, cost, StubEvaluator(), budget=0.5)
    env.reset(seed=0)
    env.step(np.array([0.0], dtype=np.float32))
    with pytest.raises(ValueError) as err:
        env.step(action)
    assert repr(action) in str(err.value)
    # The rejected action changed nothing: the episode still needs exactly the remaining layers.
    _, _, terminated, _, _ = env.step(np.array([0.0], dtype=np.float32))
    for _ in range(len(graph) - 3):
        assert not env.step(np.array([0.0], dtype=np.float32))[2]
    assert env.step(np.array([0.0], dtype=np.float32))[2]


def test_action_on_the_bounds_and_in_other_forms_is_accepted(cnn_parts) -> None:
    graph, cost = cnn_parts
    assert len(graph) == 6
    env = PruningEnv(graph, cost, StubEvaluator(), budget=1.0)
    env.reset(seed=0)
    forms = (np.array([-1.0], dtype=np.float32), np.float32(1.0), 0.0, [0.5], np.array([1.0]), np.array([-1.0]))
    ends = [env.step(action) for action in forms]
    assert [end[2] for end in ends] == [False] * 5 + [True]
    # Linear map of [-1, 1] onto [min_keep, max_keep] = [0.2, 1.0]; budget 1.0 clips nothing.
    assert ends[-1][4]["keep"] == pytest.approx([0.2, 1.0, 0.6, 0.8, 1.0, 0.2], abs=1e-12)


def test_unknown_reward_lists_the_choices(cnn_parts) -> None:
    graph, cost = cnn_parts
    with pytest.raises(ConfigError) as err:
        PruningEnv(graph, cost, StubEvaluator(), budget=0.5, reward="accuracy")
    assert "'accuracy'" in str(err.value)
    assert all(name in str(err.value) for name in REWARDS)


@pytest.mark.parametrize("reward, cost_cls", [("acc_log_params", FlopsCost), ("acc_log_flops", ParamsCost)])
def test_log_cost_reward_of_the_other_resource_is_a_config_error(reward, cost_cls, cnn_parts) -> None:
    graph, _ = cnn_parts
    with pytest.raises(ConfigError, match=reward):
        PruningEnv(graph, cost_cls(graph), StubEvaluator(), budget=0.5, reward=reward)


def test_granularity_must_match_the_cost_model(cnn_parts) -> None:
    graph, cost = cnn_parts
    with pytest.raises(ConfigError, match="granularity"):
        PruningEnv(graph, cost, StubEvaluator(), budget=0.5, granularity="weight")


def test_stub_evaluator_meets_the_evaluator_protocol() -> None:
    from amc.evaluation.evaluator import Evaluator

    assert isinstance(StubEvaluator(), Evaluator)


def test_make_env_takes_evaluation_settings_by_name(tmp_path) -> None:
    import envs
    from amc.errors import ConfigError
    from amc.evaluation.evaluator import EvalConfig
    from amc.train import TrainConfig

    env = envs.make_env(model="cnn", dataset="digits", budget=0.3, cache_dir=str(tmp_path),
                        train=TrainConfig(epochs=1), eval=EvalConfig(bn_batches=2), val_limit=64)
    evaluator = env.unwrapped.evaluator
    assert evaluator.config.val_limit == 64 and evaluator.config.bn_batches == 2 and evaluator.val_size == 64
    with pytest.raises(ConfigError, match="bogus"):
        envs.make_env(model="cnn", dataset="digits", budget=0.3, bogus=1)


def test_numpy_scalar_budgets_are_accepted() -> None:
    import numpy as np

    from envs import check_budget

    assert check_budget(np.float32(0.5)) == 0.5
    assert check_budget(np.int64(1)) == 1.0
