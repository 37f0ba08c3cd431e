"""Episode rewards: hand-computed values, the registry, and the rewards the environment pays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from amc.cost.analytic import FlopsCost, ParamsCost
from amc.errors import ConfigError
from envs import REWARDS, PruningEnv, RewardInput, get_reward
from envs.rewards import acc, acc_log_flops, acc_log_params, acc_penalty
from tests.envs.conftest import StubEvaluator


def _r(accuracy: float, cost: float, *, base: float = 1000.0, budget: float = 0.5,
       resource: str = "flops") -> RewardInput:
    return RewardInput(accuracy=accuracy, cost=cost, base_cost=base, budget=budget, resource=resource)


def test_registry_names_every_reward() -> None:
    assert REWARDS == {"acc": acc, "acc_log_flops": acc_log_flops, "acc_log_params": acc_log_params,
                       "acc_penalty": acc_penalty}
    assert get_reward("acc", resource="flops") is acc
    assert get_reward("acc_log_params", resource="params") is acc_log_params


def test_acc_is_the_accuracy_whatever_the_cost() -> None:
    assert acc(_r(0.9, 100.0)) == 0.9
    assert acc(_r(0.9, 5000.0)) == 0.9  # over budget: acc ignores cost (clipping keeps episodes feasible)


def test_acc_log_flops_is_minus_error_times_log_flops() -> None:
    # error 0.1, ln(1000) = 6.907755278982137
    assert acc_log_flops(_r(0.9, 1000.0)) == pytest.approx(-0.6907755278982137, rel=1e-12)
    # error 0.25, ln(e^4) = 4
    assert acc_log_flops(_r(0.75, math.exp(4.0))) == pytest.approx(-1.0, rel=1e-12)
    assert acc_log_flops(_r(1.0, 1e6)) == 0.0  # no error, no penalty
    # Fewer FLOPs at the same accuracy is better; higher accuracy at the same FLOPs is better.
    assert acc_log_flops(_r(0.9, 1e5)) > acc_log_flops(_r(0.9, 1e6))
    assert acc_log_flops(_r(0.95, 1e6)) > acc_log_flops(_r(0.9, 1e6))


def test_acc_log_params_is_minus_error_times_log_params() -> None:
    # error 0.2, ln(10000) = 9.210340371976184
    r = _r(0.8, 1e4, base=1e5, resource="params")
    assert acc_log_params(r) == pytest.approx(-1.8420680743952367, rel=1e-12)


def test_acc_penalty_is_zero_within_budget_and_grows_with_the_overshoot() -> None:
    assert acc_penalty(_r(0.9, 400.0)) == 0.9  # ratio 0.4 <= budget 0.5
    assert acc_penalty(_r(0.9, 500.0)) == 0.9  # exactly on budget
    # ratio 0.6: overshoot (0.6 - 0.5) / 0.5 = 0.2, times weight 2 -> 0.9 - 0.4
    assert acc_penalty(_r(0.9, 600.0)) == pytest.approx(0.5, abs=1e-12)
    assert acc_penalty(_r(0.9, 600.0), weight=1.0) == pytest.approx(0.7, abs=1e-12)
    # ratio 1.0: overshoot 1.0 -> 0.9 - 2
    assert acc_penalty(_r(0.9, 1000.0)) == pytest.approx(-1.1, abs=1e-12)
    assert acc_penalty(_r(0.9, 700.0)) < acc_penalty(_r(0.9, 600.0)) < acc_penalty(_r(0.9, 500.0))


def test_reward_input_cost_ratio() -> None:
    assert _r(0.5, 250.0).cost_ratio == 0.25


def test_unknown_reward_and_resource_mismatch_are_config_errors() -> None:
    with pytest.raises(ConfigError) as err:
        get_reward("top5", resource="flops")
    assert "'top5'" in str(err.value) and all(name in str(err.value) for name in REWARDS)
    with pytest.raises(ConfigError, match="'params'"):
        get_reward("acc_log_params", resource="flops")
    with pytest.raises(ConfigError, match="'flops'"):
        get_reward("acc_log_flops", resource="params")


# ---------------------------------------------------------------- in the environment


def _episode(env: PruningEnv, action: float) -> tuple[list[float], dict]:
    env.reset(seed=0)
    rewards = []
    for _ in range(env.n_layers):
        _, reward, terminated, _, info = env.step(np.array([action], dtype=np.float32))
        rewards.append(reward)
    assert terminated
    return rewards, info


@pytest.fixture(scope="module")
def resnet20(model_graph):
    return model_graph("resnet20")[1]


def test_env_pays_acc_log_flops_of_the_final_policy(resnet20) -> None:
    cost = FlopsCost(resnet20)
    env = PruningEnv(resnet20, cost, StubEvaluator(0.75), budget=0.4, reward="acc_log_flops")
    rewards, info = _episode(env, 0.3)
    assert rewards[:-1] == [0.0] * (len(resnet20) - 1)
    assert rewards[-1] == pytest.approx(-0.25 * math.log(cost.cost(info["keep"])), rel=1e-12)
    assert rewards[-1] < 0


def test_env_pays_acc_log_params_with_a_params_cost_model(resnet20) -> None:
    cost = ParamsCost(resnet20)
    env = PruningEnv(resnet20, cost, StubEvaluator(0.5), budget=0.4, reward="acc_log_params")
    rewards, info = _episode(env, 1.0)
    assert info["cost_ratio"] <= 0.4
    assert rewards[-1] == pytest.approx(-0.5 * math.log(info["cost"]), rel=1e-12)


def test_unclipped_env_can_exceed_the_budget_and_is_penalised(resnet20) -> None:
    cost = FlopsCost(resnet20)
    env = PruningEnv(resnet20, cost, StubEvaluator(0.75), budget=0.5, reward="acc_penalty", clip=False)
    rewards, info = _episode(env, 1.0)  # keep everything
    assert info["keep"] == [1.0] * len(resnet20)
    assert info["cost_ratio"] == 1.0 > env.budget
    # overshoot (1.0 - 0.5) / 0.5 = 1, weight 2
    assert rewards[-1] == pytest.approx(0.75 - 2.0, abs=1e-12)
    assert rewards[-1] < info["accuracy"]
    # Within budget the unclipped env pays the plain accuracy.
    rewards, info = _episode(env, -1.0)
    assert info["cost_ratio"] <= 0.5 and rewards[-1] == 0.75
    # The same greedy actions with clipping (default) stay within budget and are not penalised.
    clipped = PruningEnv(resnet20, cost, StubEvaluator(0.75), budget=0.5, reward="acc_penalty")
    rewards, info = _episode(clipped, 1.0)
    assert info["cost_ratio"] <= 0.5 and rewards[-1] == 0.75
