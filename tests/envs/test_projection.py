"""Budget clipping and projection: every finished episode is feasible, measured on the pruned model.

Acceptance 2: for 1,000 random action sequences per built-in model and budget in {0.1, ..., 0.9}, the
final policy's exact cost is <= budget x base cost (the analytic cost, and for the policies closest to
the budget also FLOPs counted by ``FlopCounterMode`` on the pruned model), and no layer is below
``min_keep`` or at zero channels. Acceptance 3: :meth:`BudgetProjector.project` is the env's clipping.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from amc.cost.analytic import FlopsCost, ParamsCost

from amc.graph.widths import weights_kept
from amc.errors import BudgetError, ConfigError
from amc.graph.discover import LayerGraph
from amc.pruning.pruner import prune_model
from envs import BudgetProjector, PruningEnv
from tests.envs.conftest import MODEL_NAMES, StubEvaluator

BUDGETS = tuple(round(0.1 * i, 1) for i in range(1, 10))  # 0.1 .. 0.9
N_EPISODES = 1000
N_MEASURED = 10
MIN_KEEP = 0.2


def random_actions(rng: np.random.Generator, episodes: int, layers: int) -> np.ndarray:
    """Random action sequences ``(episodes, layers, 1)``: per episode a random level and spread.

    Levels above 1 saturate at +1 (keep everything), which is what stresses the budget clipping; plain
    uniform actions would rarely ask for more than the budget allows.
    """
    level = rng.uniform(-1.0, 1.5, size=(episodes, 1))
    spread = rng.uniform(0.0, 1.0, size=(episodes, 1))
    actions = np.clip(level + spread * rng.uniform(-1.0, 1.0, size=(episodes, layers)), -1.0, 1.0)
    return actions.astype(np.float32)[..., None]


def run_episodes(env: PruningEnv, actions: np.ndarray) -> list[list[float]]:
    """Final keep ratios of each action sequence, checking the episode's bookkeeping on the way."""
    policies = []
    for episode in actions:
        env.reset()
        for t, action in enumerate(episode):
            _, reward, terminated, truncated, info = env.step(action)
            assert terminated == (t == len(episode) - 1) and not truncated
        policies.append(info["keep"])
    return policies


def smallest_budget(cost_model, min_keep: float = MIN_KEEP) -> float:
    n = len(cost_model.graph.layers)
    return cost_model.cost([min_keep] * n) / cost_model.base


def measured_cost(model: nn.Module, graph: LayerGraph, resource: str) -> int:
    if resource == "params":
        return sum(p.numel() for p in model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *graph.input_shape))  # a batch of 1: FLOPs per sample
    return counter.get_total_flops()


def check_feasible(policies: list[list[float]], cost_model, budget: float, *, min_keep: float = MIN_KEEP,
                   max_keep: float = 1.0) -> list[float]:
    """Asserts every policy meets the budget and the keep range; returns their cost ratios."""
    graph = cost_model.graph
    limit = budget * cost_model.base
    ratios = []
    for keep in policies:
        assert len(keep) == len(graph)
        cost = cost_model.cost(keep)
        assert cost <= limit, (budget, cost / cost_model.base, keep)
        assert min(keep) >= min_keep and max(keep) <= max_keep, keep
        if cost_model.granularity == "channel":
            assert min(graph.channels(keep)) >= 1
        ratios.append(cost / cost_model.base)
    return ratios


def check_measured(model: nn.Module, cost_model, budget: float, policies: list[list[float]],
                   ratios: list[float]) -> int:
    """Prunes the policies closest to the budget (distinct channel counts) and measures their cost."""
    graph = cost_model.graph
    by_channels = {}
    for index in np.argsort(ratios)[::-1]:
        by_channels.setdefault(graph.channels(policies[index]), policies[index])
        if len(by_channels) == N_MEASURED:
            break
    for channels, keep in by_channels.items():
        pruned = prune_model(model, graph, keep)
        measured = measured_cost(pruned, graph, cost_model.resource)
        assert measured == cost_model.cost(keep), (graph.round_to, channels)
        assert measured <= budget * cost_model.base
        for spec, n in zip(graph.layers, channels):
            module = pruned.get_submodule(spec.name)
            out = module.out_features if isinstance(module, nn.Linear) else module.out_channels
            assert out == n >= 1
    return len(by_channels)


def check_budgets(model, cost_model, budgets, seed: int) -> dict[float, float]:
    """The acceptance-2 property over ``budgets``; returns the highest cost ratio reached per budget."""
    smallest = smallest_budget(cost_model)
    rng = np.random.default_rng(seed)
    highest = {}
    for budget in budgets:
        if budget < smallest:
            with pytest.raises(BudgetError):
                PruningEnv(cost_model.graph, cost_model, StubEvaluator(), budget=budget)
            continue
        env = PruningEnv(cost_model.graph, cost_model, StubEvaluator(), budget=budget)
        policies = run_episodes(env, random_actions(rng, N_EPISODES, len(cost_model.graph)))
        ratios = check_feasible(policies, cost_model, budget)
        assert check_measured(model, cost_model, budget, policies, ratios) >= min(N_MEASURED, 2)
        highest[budget] = max(ratios)
    return highest


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_episode_meets_the_budget_measured_on_the_pruned_model(name, budget, model_graph) -> None:
    """One item per (model, budget), so parallel test workers share the 36 cells evenly."""
    model, graph = model_graph(name)
    cost_model = FlopsCost(graph)
    highest = check_budgets(model, cost_model, (budget,), seed=BUDGETS.index(budget))
    assert set(highest) == {budget}  # reachable at min_keep 0.2 (the smallest budget is 5-8%)
    # The clipping does not waste the budget: the greediest episodes come close to it.
    assert highest[budget] > budget * 0.9, (budget, highest[budget])


def test_round_to_4_episodes_meet_the_budget(model_graph) -> None:
    model, graph = model_graph("resnet20", round_to=4)
    check_budgets(model, FlopsCost(graph), (0.3, 0.5), seed=1)


def test_params_budget_is_met_measured_by_parameter_count(model_graph) -> None:
    model, graph = model_graph("cnn")
    check_budgets(model, ParamsCost(graph), BUDGETS, seed=2)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("min_keep", [0.2, 0.5])
def test_budget_error_exactly_when_the_budget_is_unreachable(name, min_keep, model_graph) -> None:
    _, graph = model_graph(name)
    cost_model = FlopsCost(graph)
    smallest = smallest_budget(cost_model, min_keep)
    for budget in (*BUDGETS, smallest * (1 - 1e-6)):
        if budget < smallest:
            with pytest.raises(BudgetError) as err:
                PruningEnv(graph, cost_model, StubEvaluator(), budget=budget, min_keep=min_keep)
            message = str(err.value)
            assert f"{smallest:.4f}" in message and str(math.ceil(smallest * 1e4) / 1e4) in message
            assert isinstance(err.value, ConfigError)
        else:
            env = PruningEnv(graph, cost_model, StubEvaluator(), budget=budget, min_keep=min_keep)
            assert env.projector.smallest_budget == pytest.approx(smallest, rel=1e-12)
    if min_keep == 0.5:
        assert 0.1 < smallest  # some grid budgets really were unreachable
    # On the threshold itself the only feasible policy is "every layer at min_keep", whatever the actions.
    env = PruningEnv(graph, cost_model, StubEvaluator(), budget=smallest, min_keep=min_keep)
    floor = graph.channels([min_keep] * len(graph))
    for keep in run_episodes(env, random_actions(np.random.default_rng(3), 20, len(graph))):
        assert graph.channels(keep) == floor


# ---------------------------------------------------------------- acceptance 3: projection


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_project_gives_feasible_policies_for_any_keep_vector(name, model_graph) -> None:
    _, graph = model_graph(name)
    cost_model = FlopsCost(graph)
    rng = np.random.default_rng(4)
    for budget in (0.15, 0.4, 0.8):
        projector = BudgetProjector(cost_model, budget)
        raw = rng.uniform(0.0, 1.0, size=(100, len(graph)))
        raw[:20] = 1.0  # the greediest requests
        raw[20:40] = 0.0  # below min_keep everywhere
        projected = [projector.project(list(map(float, row))) for row in raw]
        check_feasible(projected, cost_model, budget)
        assert all(projector.feasible(keep) for keep in projected)
        # Projection is idempotent: a projected policy satisfies every prefix's clip already.
        assert all(projector.project(keep) == keep for keep in projected)
        # Requests below min_keep are raised to it (rounded up to whole channels).
        for keep in projected[20:40]:
            assert graph.channels(keep) == graph.channels([MIN_KEEP] * len(graph))


class OddChannelsAreSlow(FlopsCost):
    """A cost that does not grow with every channel, like measured latency: each layer with an odd channel
    count adds 3% of the model's FLOPs (oneDNN's slow unaligned kernels, exaggerated)."""

    @property
    def _step(self) -> float:
        return 0.03 * sum(spec.flops for spec in self.graph.layers)

    def _penalty(self, channels: np.ndarray) -> np.ndarray:
        return self._step * (np.mod(channels, 2) == 1)

    def _value_channels(self, channels: np.ndarray) -> float:
        return super()._value_channels(channels) + float(self._penalty(channels).sum())

    def costs_varying(self, keep, t, candidates):
        base = super().costs_varying(keep, t, candidates)
        channels = self.round_channels(np.asarray(keep, dtype=np.float64))
        others = self._penalty(channels).sum() - self._penalty(channels)[t]
        cand = self.round_channels(np.asarray(candidates, dtype=np.float64), self._n[t])
        return base + others + self._step * (np.mod(cand, 2) == 1)


@pytest.mark.parametrize("name", ["cnn", "resnet20"])
def test_projection_stays_feasible_when_cost_does_not_grow_with_channels(name, model_graph) -> None:
    _, graph = model_graph(name)
    cost_model = OddChannelsAreSlow(graph)
    rng = np.random.default_rng(7)
    keep = rng.uniform(0.2, 1.0, len(graph))
    t = 0
    curve = cost_model.costs_varying(keep, t, np.arange(1, graph[t].out_channels + 1) / graph[t].out_channels)
    assert np.any(np.diff(curve) < 0), "the test cost must really be non-monotone"
    lowered = 0
    smallest = BudgetProjector(cost_model, 1.0).smallest_budget
    for budget in (smallest + 0.05, (smallest + 1) / 2):
        projector = BudgetProjector(cost_model, budget)
        for raw in rng.uniform(0.0, 1.0, size=(200, len(graph))):
            projected = projector.project(raw.tolist())
            assert cost_model.cost(projected) <= budget * cost_model.base * (1 + 1e-12)
            assert all(p <= max(r, MIN_KEEP) + 1e-12 for p, r in zip(projected, raw))  # only ever lowered
            lowered += sum(p < max(r, MIN_KEEP) - 1e-9 for p, r in zip(projected, raw))
    assert lowered > 0


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("granularity", ["channel", "weight"])
def test_project_agrees_with_the_env_exactly(name, granularity, model_graph) -> None:
    _, graph = model_graph(name)
    cost_model = FlopsCost(graph, granularity=granularity)
    rng = np.random.default_rng(5)
    for budget in (0.25, 0.5):
        env = PruningEnv(graph, cost_model, StubEvaluator(), budget=budget, granularity=granularity)
        projector = BudgetProjector(FlopsCost(graph, granularity=granularity), budget)  # independent of the env
        actions = random_actions(rng, 40, len(graph))
        policies = run_episodes(env, actions)
        for episode, keep in zip(actions, policies):
            expected = projector.project([env.keep_of_action(float(a[0])) for a in episode])
            assert len(keep) == len(expected)
            assert all(a == b for a, b in zip(keep, expected)), (keep, expected)
        # The clipping really acted in some episodes, so the agreement is not that of two identities.
        requested = [[env.keep_of_action(float(a[0])) for a in episode] for episode in actions]
        assert any(k != r for keep, req in zip(policies, requested) for k, r in zip(keep, req))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_the_incremental_walk_equals_the_direct_computation(name, model_graph) -> None:
    """``clip_next`` on a :class:`PrefixWalk` (the env's and ``project``'s path) gives what ``clip`` gives from
    the whole vector, and the walk's cost is ``cost_of`` the decided layers with the rest whole: exactly, for
    FLOPs and params, with and without rounding."""
    rng = np.random.default_rng(8)
    for round_to in (1, 4):
        _, graph = model_graph(name, round_to=round_to)
        n = len(graph)
        for cost_model in (FlopsCost(graph), ParamsCost(graph)):
            assert cost_model.walks
            for budget in (0.2, 0.5):
                projector = BudgetProjector(cost_model, budget)
                lowered = 0
                for raw in rng.uniform(0.1, 1.0, size=(20, n)) ** 0.5:  # mostly above the budget's share
                    walk, keep = projector.walk(), np.ones(n)
                    for t, value in enumerate(raw):
                        assert walk.cost() == cost_model.cost_of(np.concatenate([keep[:t], np.ones(n - t)]))
                        keep[t] = projector.clip_next(walk, value)
                        assert keep[t] == projector.clip(t, keep, value)
                        lowered += keep[t] < max(value, MIN_KEEP)
                        walk.decide(keep[t])
                    assert walk.cost() == cost_model.cost_of(keep)
                assert lowered > 0  # the budget really clipped, so the agreement is not that of identities
    assert not OddChannelsAreSlow(graph).walks  # a cost of more than the module shapes takes the direct path


def test_project_leaves_feasible_policies_unchanged(model_graph) -> None:
    _, graph = model_graph("resnet20")
    cost_model = FlopsCost(graph)
    n = len(graph)
    assert BudgetProjector(cost_model, 1.0).project([1.0] * n) == [1.0] * n
    assert BudgetProjector(cost_model, 0.5).project([MIN_KEEP] * n) == [MIN_KEEP] * n
    # A mixed policy well inside the budget, whose every prefix is also fine with later layers at min_keep.
    keep = [0.3, 0.9, 0.45, 0.6, 0.25, 0.7, 0.35, 0.5, 0.4, 0.55, 0.3, 0.65][:n]
    assert cost_model.ratio(keep) < 0.5
    assert BudgetProjector(cost_model, 0.5).project(keep) == keep
    # Keep ratios above max_keep are lowered to it even when the budget would allow more.
    assert BudgetProjector(cost_model, 1.0, max_keep=0.8).project([1.0] * n) == [0.8] * n


def test_project_rejects_bad_vectors(model_graph) -> None:
    _, graph = model_graph("cnn")
    projector = BudgetProjector(FlopsCost(graph), 0.5)
    with pytest.raises(ConfigError, match="expected 6 keep ratios"):
        projector.project([0.5] * 5)
    for bad in (float("nan"), "0.5", None, True):
        with pytest.raises(ConfigError, match="must be a number"):
            projector.project([0.5, 0.5, bad, 0.5, 0.5, 0.5])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_weight_granularity_episodes_meet_the_sparse_budget(name, model_graph) -> None:
    model, graph = model_graph(name)
    rng = np.random.default_rng(6)
    for cost_cls in (FlopsCost, ParamsCost):
        cost_model = cost_cls(graph, granularity="weight")
        # Sparse costs stay above min_keep: ceil(0.2 * numel) weights per tensor; biases, BN and the
        # layers that are no decision stay dense.
        smallest = smallest_budget(cost_model)
        assert 0.2 < smallest < 0.3
        with pytest.raises(BudgetError, match=f"{smallest:.4f}"):
            PruningEnv(graph, cost_model, StubEvaluator(), budget=smallest * (1 - 1e-6), granularity="weight")
        for budget in (0.3, 0.45, 0.6):
            env = PruningEnv(graph, cost_model, StubEvaluator(), budget=budget, granularity="weight")
            policies = run_episodes(env, random_actions(rng, 100, len(graph)))
            ratios = check_feasible(policies, cost_model, budget)
            assert max(ratios) > budget * 0.9
    # Measured: the zeros unstructured pruning leaves in the closest-to-budget ParamsCost policy.
    keep = policies[int(np.argmax(ratios))]
    pruned = prune_model(model, graph, keep, granularity="weight")
    zeros = sum(int((pruned.get_submodule(m).weight == 0).sum()) - int((model.get_submodule(m).weight == 0).sum())
                for spec in graph.layers for m in spec.members
                if not isinstance(model.get_submodule(m), nn.modules.batchnorm._BatchNorm))
    assert graph.total_params - zeros == cost_model.cost(keep) <= 0.6 * cost_model.base
    for spec, ratio in zip(graph.layers, keep):
        for m in spec.members:
            module = pruned.get_submodule(m)
            if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                assert int((module.weight != 0).sum()) == weights_kept(ratio, module.weight.numel()) >= 1
