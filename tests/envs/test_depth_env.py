"""The environment with block (depth) decisions: step order, skipped decisions, feasibility, observations."""

from __future__ import annotations

import gymnasium.utils.env_checker as gym_checker
import numpy as np
import pytest

from amc.cost.analytic import FlopsCost, ParamsCost
from amc.graph.blocks import find_blocks
from amc.graph.probe import counting_flops
from amc.errors import BudgetError
from amc.pruning.depth import DepthCost, DepthKeep, dropped_of, irrelevant_decisions
from envs import OBS_FEATURES, BudgetProjector, PruningEnv
from envs.depth_steps import BLOCK, WIDTH, episode_steps
from tests.conftest import build_small_model
from tests.envs.conftest import StubEvaluator

BUDGET = 0.35


@pytest.fixture(scope="module")
def resnet20():
    model, example = build_small_model("resnet20")
    from amc.graph.discover import discover

    graph = discover(model, example[:1])
    return model, example, graph, find_blocks(model, example[:1], graph=graph)


def make(resnet20, cost=FlopsCost, **kwargs) -> PruningEnv:
    _, _, graph, blocks = resnet20
    return PruningEnv(graph, DepthCost(cost(graph), blocks), StubEvaluator(), budget=BUDGET, **kwargs)


def test_block_steps_come_just_before_their_first_width_decision(resnet20) -> None:
    _, _, graph, blocks = resnet20
    steps = episode_steps(graph, blocks)
    assert [s.index for s in steps if s.kind == WIDTH] == list(range(len(graph)))
    assert [s.index for s in steps if s.kind == BLOCK] == list(range(len(blocks))) and len(blocks) == 7
    for i, step in enumerate(steps):
        if step.kind == BLOCK:
            block = blocks[step.index]
            nxt = steps[i + 1]
            assert nxt.kind == WIDTH and graph.layers[nxt.index].name == block.decisions[0]


def test_without_depth_the_observation_is_unchanged(resnet20) -> None:
    _, _, graph, _ = resnet20
    env = PruningEnv(graph, FlopsCost(graph), StubEvaluator(), budget=BUDGET)
    assert env.observation_space.shape == (len(OBS_FEATURES),) and env.max_steps == len(graph)
    assert make(resnet20).observation_space.shape == (len(OBS_FEATURES) + 2,)


def test_dropping_skips_the_blocks_irrelevant_decisions(resnet20) -> None:
    _, _, graph, blocks = resnet20
    env = make(resnet20)
    obs, _ = env.reset(seed=0)
    steps = 0
    while True:
        is_block = obs[len(OBS_FEATURES)] == 1.0
        # drop every block, keep every width at its largest
        obs, reward, terminated, _, info = env.step(np.array([-1.0 if is_block else 1.0], dtype=np.float32))
        steps += 1
        if terminated:
            break
    dropped = [b.name for b in blocks]
    skipped = irrelevant_decisions(graph, blocks, dropped=dropped)
    assert info["dropped"] == dropped and info["policy"].dropped == tuple(dropped)
    assert steps == len(graph) + len(blocks) - len(skipped)  # no step for a decision made irrelevant
    assert all(info["keep"][d] == 1.0 for d in skipped)
    assert info["cost"] == DepthCost(FlopsCost(graph), blocks).cost(list(info["keep"]), dropped)


@pytest.mark.parametrize("cost", [FlopsCost, ParamsCost])
def test_random_episodes_stay_feasible_and_cost_what_the_dropped_model_counts(resnet20, cost) -> None:
    from amc.pruning.depth import drop_blocks
    from amc.pruning.pruner import prune_model

    model, example, graph, blocks = resnet20
    env = make(resnet20, cost)
    rng = np.random.default_rng(0)
    seen_drops = set()
    for episode in range(12):
        env.reset(seed=episode)
        terminated = False
        while not terminated:
            _, _, terminated, _, info = env.step(rng.uniform(-1, 1, 1).astype(np.float32))
        assert info["cost_ratio"] <= BUDGET + 1e-9
        seen_drops.add(len(info["dropped"]))
        if episode < 3:  # the recorded cost is the pruned-and-dropped model's, exactly
            pruned = drop_blocks(prune_model(model, graph, list(info["keep"])), info["dropped"], inplace=True)
            if cost is FlopsCost:
                with counting_flops() as counter:
                    pruned(example[:1])
                assert info["cost"] == counter.get_total_flops()
            else:
                assert info["cost"] == sum(p.numel() for p in pruned.parameters())
    assert len(seen_drops) > 1  # random actions drop some blocks, not always the same number


def test_preview_is_the_policy_step_finishes(resnet20) -> None:
    env = make(resnet20)
    env.reset(seed=0)
    rng = np.random.default_rng(1)
    while True:
        action = rng.uniform(-1, 1, 1).astype(np.float32)
        preview = env.preview(action)
        _, _, terminated, _, info = env.step(action)
        if terminated:
            assert preview == info["policy"]
            break
        assert preview is None


def test_depth_env_passes_the_gymnasium_checker(resnet20) -> None:
    gym_checker.check_env(make(resnet20), skip_render_check=True)


def test_actions_for_replays_a_depth_policy(resnet20) -> None:
    env = make(resnet20)
    env.reset(seed=0)
    rng = np.random.default_rng(2)
    terminated = False
    while not terminated:
        _, _, terminated, _, info = env.step(rng.uniform(-1, 1, 1).astype(np.float32))
    actions = env.actions_for(info["keep"])
    env.reset(seed=1)
    for i, action in enumerate(actions):
        _, _, terminated, _, replayed = env.step(action)
        assert terminated == (i == len(actions) - 1)
    assert replayed["policy"].dropped == info["policy"].dropped
    assert replayed["policy"].channels == info["policy"].channels


# ---------------------------------------------------------------- budgets only dropping blocks reaches

def depth_only_budget(resnet20, cost=FlopsCost) -> tuple[DepthCost, float]:
    """A budget between the smallest model of widths alone and the smallest with every block dropped."""
    _, _, graph, blocks = resnet20
    depth = DepthCost(cost(graph), blocks)
    floor = [0.2] * len(graph)
    widths_only, everything = depth.ratio(floor), depth.ratio(floor, [b.name for b in blocks])
    assert everything < widths_only
    return depth, (widths_only + everything) / 2


def test_a_budget_only_drops_reach_is_accepted_and_projected_by_dropping(resnet20) -> None:
    _, _, graph, blocks = resnet20
    depth, budget = depth_only_budget(resnet20)
    with pytest.raises(BudgetError, match="unreachable"):
        BudgetProjector(FlopsCost(graph), budget)  # widths alone
    projector = BudgetProjector(depth, budget)
    assert not projector.widths_reach and projector.smallest_budget < budget
    rng = np.random.default_rng(0)
    for _ in range(10):
        keep = rng.uniform(0.2, 1.0, len(graph)).tolist()
        for proposal in (keep, DepthKeep(keep, [blocks[int(rng.integers(len(blocks)))].name])):
            projected = projector.project(proposal)
            assert isinstance(projected, DepthKeep) and set(dropped_of(proposal)) <= set(projected.dropped)
            assert depth.cost(projected) <= budget * depth.base * (1 + 1e-12)
            assert projector.feasible(projected)
    with pytest.raises(BudgetError, match="every removable block dropped"):
        BudgetProjector(depth, depth.ratio([0.2] * len(graph), [b.name for b in blocks]) * 0.9)


def test_episodes_under_a_budget_only_drops_reach_stay_feasible(resnet20) -> None:
    _, _, graph, blocks = resnet20
    depth, budget = depth_only_budget(resnet20)
    env = PruningEnv(graph, depth, StubEvaluator(), budget=budget)
    rng = np.random.default_rng(1)
    for episode in range(8):
        env.reset(seed=episode)
        terminated, keep_all = False, episode % 2 == 0  # half the episodes ask to keep every block
        while not terminated:
            action = np.array([1.0], dtype=np.float32) if keep_all else rng.uniform(-1, 1, 1).astype(np.float32)
            _, _, terminated, _, info = env.step(action)
        assert info["dropped"] and info["cost_ratio"] <= budget + 1e-9
        assert info["cost"] == pytest.approx(depth.cost(info["keep"], info["dropped"]))
