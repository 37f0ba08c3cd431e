"""The deployable-model benchmark's lattice bound: an exhaustive search that must agree with brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from amc.cost.analytic import FlopsCost, ParamsCost
from amc.errors import ConfigError
from amc.cost.latency import LatencyConfig, build_latency_cost
from amc.graph.discover import discover
from search.bench.finetune import lattice_bound


@pytest.fixture(scope="module")
def graph(small_model):
    model, example = small_model("resnet20")
    return discover(model, example[:1], round_to=16)


def test_vectorised_costs_equal_one_by_one(graph, small_model, tmp_path):
    model, _ = small_model("resnet20")
    timed = LatencyConfig(passes=1, grid=3, min_run_time=0.001, model_run_time=0.005, calibration_keeps=(0.5,),
                          calibration_random=2, calibration_rounds=2, cache_dir=str(tmp_path))
    rng = np.random.default_rng(0)
    widths = np.array([spec.out_channels for spec in graph.layers])
    columns = np.stack([rng.integers(1, w + 1, 50) for w in widths])  # (decisions, 50)
    for cost in (FlopsCost(graph), ParamsCost(graph), build_latency_cost(model, graph, timed, progress=False)):
        expected = [cost.cost_channels(columns[:, j]) for j in range(columns.shape[1])]
        assert cost.costs_channels(columns) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("chunk", [0, 1, 64, 1 << 17])  # the head/tail split must not change the answer
def test_lattice_bound_is_the_brute_force_optimum(graph, chunk):
    flops, params = FlopsCost(graph), ParamsCost(graph)  # params stand in for a latency table
    budget = 0.6
    options = []
    for spec, lo in zip(graph.layers, graph.channels([0.2] * len(graph))):
        options.append(sorted({*range(lo, spec.out_channels + 1, 16), spec.out_channels}))
    best, count = None, 0
    for channels in itertools.product(*options):
        count += 1
        f = flops.cost_channels(channels) / flops.base
        if f <= budget:
            score = (params.cost_channels(channels) / params.base) / f
            best = min(best or (score, channels), (score, channels))
    bound = lattice_bound(params, flops, budget, min_keep=0.2, chunk=chunk)
    assert bound.policies == count > 100
    assert bound.flops_ratio <= budget
    assert bound.predicted_latency_ratio / bound.flops_ratio == pytest.approx(best[0])
    assert params.cost_channels(bound.channels) / params.base == pytest.approx(bound.predicted_latency_ratio)


def test_lattice_bound_refuses_a_lattice_too_large_or_a_budget_too_small(graph):
    flops = FlopsCost(graph)
    with pytest.raises(ConfigError, match=r"has [\d,]+ policies, more than 10 to score: use a larger round_to"):
        lattice_bound(flops, flops, 0.5, min_keep=0.2, max_policies=10)
    with pytest.raises(ConfigError, match=r"within FLOPs budget 0.001: the smallest keeps 0\.4642 of the FLOPs"):
        lattice_bound(flops, flops, 0.001, min_keep=0.2)
