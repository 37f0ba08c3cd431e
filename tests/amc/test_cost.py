"""Oracle tests: the analytic cost models against FlopCounterMode and the real parameter count."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from amc.cost.analytic import AnalyticCost, FlopsCost, ParamsCost, make_cost_model
from amc.cost.base import ANALYTIC_RESOURCES, RESOURCES, CostModel, ShapeCost
from amc.cost.latency import LatencyCost
from amc.errors import ConfigError
from amc.graph.discover import discover
from amc.graph.widths import channels_for, weights_kept
from amc.models import build_model
from amc.pruning.pruner import prune_model

N_POLICIES = 50


class ConcatGroupedNet(nn.Module):
    """Two branches concatenated, a grouped conv, a depthwise conv, a flatten into a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.a = nn.Conv2d(16, 12, 3, padding=1, bias=False)
        self.b = nn.Conv2d(16, 20, 1)
        self.bn = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32)
        self.c = nn.Conv2d(32, 24, 1)
        self.fc1 = nn.Linear(24 * 4 * 4, 40)
        self.fc2 = nn.Linear(40, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.grouped(self.stem(x).relu())  # (B, 16, 8, 8)
        x = self.bn(torch.cat([self.a(x), self.b(x)], dim=1)).relu()  # (B, 32, 8, 8)
        x = self.c(self.dw(x)).relu()  # (B, 24, 4, 4)
        return self.fc2(self.fc1(x.flatten(1)).relu())


MODELS = {
    "cnn": lambda: (build_model("cnn", in_channels=1, num_classes=10), (1, 8, 8)),
    "resnet20": lambda: (build_model("resnet20", in_channels=1, num_classes=10), (1, 16, 16)),
    "resnet56": lambda: (build_model("resnet56", in_channels=3, num_classes=10), (3, 8, 8)),
    "mobilenetv2": lambda: (build_model("mobilenetv2", in_channels=3, num_classes=10, width_mult=0.5), (3, 16, 16)),
    "concat_grouped": lambda: (ConcatGroupedNet(), (3, 8, 8)),
}


def measured(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *shape))
    return counter.get_total_flops(), sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cost_model_equals_measured_cost_for_random_policies(name: str) -> None:
    model, shape = MODELS[name]()
    model.eval()
    rng = random.Random(0)
    for round_to in (1, 4):
        graph = discover(model, torch.zeros(1, *shape), round_to=round_to)
        flops, params = FlopsCost(graph), ParamsCost(graph)
        assert (flops.base, params.base) == measured(model, shape)
        n = N_POLICIES // 2
        for _ in range(n):
            keep = [rng.uniform(0.01, 1.0) for _ in graph.layers]
            pruned = prune_model(model, graph, keep)
            assert (flops.cost(keep), params.cost(keep)) == measured(pruned, shape), keep
            assert flops.cost(keep) <= flops.base


def test_concat_grouped_model_discovery() -> None:
    model, shape = MODELS["concat_grouped"]()
    graph = discover(model, torch.zeros(1, *shape))
    # The stem feeds the grouped conv: both are pruned in whole groups (issue 21), 4 channels per group of
    # 4 groups each; fc2 is the output.
    assert graph.names == ("stem", "grouped", "a", "b", "c", "fc1")
    by_name = {spec.name: spec for spec in graph.layers}
    assert [(by_name[n].pattern, by_name[n].out_channels, by_name[n].unit) for n in ("stem", "grouped")] == [
        ("group", 4, 4), ("group", 4, 4)]
    assert by_name["a"].kind == "depthwise"  # a's channels run through the depthwise conv
    assert set(by_name["a"].members) == {"a", "bn", "dw"}
    fc1 = next(r for r in graph.modules if r.name == "fc1")
    assert fc1.in_deps == ((4, 16),)  # one channel of c is 4x4 inputs of fc1 through the flatten


def test_resnet_residual_layers_share_one_decision() -> None:
    model = build_model("resnet20", in_channels=1, num_classes=10)
    graph = discover(model, torch.zeros(1, 1, 16, 16))
    # 9 blocks' inner convs + one residual-stream decision per stage (16, 32, 64 channels).
    assert len(graph) == 12
    stream = [spec for spec in graph.layers if len(spec.members) > 2]
    assert [spec.out_channels for spec in stream] == [16, 32, 64]
    assert "layers.0.conv2" in stream[0].members and "conv1" in stream[0].members
    assert all("fc" != m for spec in graph.layers for m in spec.members)


def test_weight_granularity_cost_counts_nonzero_weights() -> None:
    model, shape = MODELS["cnn"]()
    graph = discover(model.eval(), torch.zeros(1, *shape))
    flops, params = FlopsCost(graph, granularity="weight"), ParamsCost(graph, granularity="weight")
    keep = [0.3, 0.5, 0.7, 0.9, 0.2, 0.6]
    pruned = prune_model(model, graph, keep, granularity="weight")
    zeroed = sum(int((p == 0).sum()) for n, p in pruned.named_parameters() if n.endswith("weight") and p.dim() > 1)
    assert params.cost(keep) == params.base - zeroed
    sparse_flops = 0
    for rec in graph.modules:
        module = pruned.get_submodule(rec.name)
        if rec.type != "bn":
            sparse_flops += 2 * rec.positions * int((module.weight != 0).sum())
    assert flops.cost(keep) == sparse_flops
    assert flops.cost([1.0] * len(graph)) == flops.base


@pytest.mark.parametrize(
    ("keep", "n", "round_to", "expected"),
    [(0.3, 10, 1, 3), (0.31, 10, 1, 4), (1e-9, 10, 1, 1), (1.0, 10, 8, 10), (0.5, 64, 8, 32), (0.51, 64, 8, 40),
     (0.01, 64, 8, 8), (0.1, 4, 8, 4)],
)
def test_channel_rounding_rule(keep: float, n: int, round_to: int, expected: int) -> None:
    assert channels_for(keep, n, round_to) == expected


def test_weights_kept_never_zero() -> None:
    assert weights_kept(1e-9, 100) == 1
    assert weights_kept(0.3, 10) == 3


def test_unknown_resource_is_refused() -> None:
    model, shape = MODELS["cnn"]()
    graph = discover(model, torch.zeros(1, *shape))
    with pytest.raises(ConfigError, match="'energy'.*flops"):
        make_cost_model("energy", graph)


def test_cost_models_are_siblings_under_one_public_base() -> None:
    model, shape = MODELS["cnn"]()
    graph = discover(model, torch.zeros(1, *shape))
    for resource in ANALYTIC_RESOURCES:
        cost = make_cost_model(resource, graph)
        assert isinstance(cost, AnalyticCost) and isinstance(cost, ShapeCost) and isinstance(cost, CostModel)
        assert cost.resource == resource and cost.ratio([1.0] * len(graph)) == 1.0
        assert cost.walks and not make_cost_model(resource, graph, granularity="weight").walks
    assert issubclass(LatencyCost, ShapeCost) and not issubclass(LatencyCost, AnalyticCost)
    assert LatencyCost.exact_walk  # declared by inheritance: its cost is a function of the module shapes
    assert RESOURCES == (*ANALYTIC_RESOURCES, LatencyCost.resource)
    with pytest.raises(TypeError):
        CostModel()  # abstract: ``cost`` is the contract


def test_a_subclass_that_changes_channel_costs_is_off_the_walk_unless_it_declares() -> None:
    model, shape = MODELS["cnn"]()
    graph = discover(model, torch.zeros(1, *shape))

    class Penalised(FlopsCost):
        def _value_channels(self, channels: np.ndarray) -> float:
            return super()._value_channels(channels) + 1.0

    class Declared(Penalised):
        exact_walk = True

    assert not Penalised(graph).walks and Declared(graph).walks and FlopsCost(graph).walks


class LogSoftmaxNet(nn.Module):
    """The classifier's output goes through log_softmax: it must still never be pruned."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.c(x))).flatten(1)
        return torch.log_softmax(self.fc(y), dim=1)


def test_classifier_behind_log_softmax_is_never_a_decision() -> None:
    graph = discover(LogSoftmaxNet().eval(), torch.zeros(1, 1, 4, 4))
    assert graph.names == ("c",)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("cost_class", [FlopsCost, ParamsCost])
def test_costs_varying_equals_the_cost_of_each_candidate(name: str, cost_class) -> None:
    """The env's per-step curve (a quadratic form in the varied decision) equals ``cost`` one by one, exactly."""
    model, shape = MODELS[name]()
    rng = np.random.default_rng(5)
    for round_to in (1, 4):
        graph = discover(model, torch.zeros(1, *shape), round_to=round_to)
        cost = cost_class(graph)
        for _ in range(10):
            keep = rng.uniform(0.05, 1.0, len(graph))
            t = int(rng.integers(len(graph)))
            n = graph[t].out_channels
            candidates = np.arange(1, n + 1) / n
            curve = cost.costs_varying(keep, t, candidates)
            expected = [cost.cost([*keep[:t], c, *keep[t + 1:]]) for c in candidates]
            assert curve.tolist() == expected, (name, round_to, t)
