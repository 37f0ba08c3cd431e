"""Depth pruning under a latency budget: the latency table covers block-dropped models (issue 34).

A dropped block's modules leave the predicted forward pass (the identity costs nothing), the calibration
times block-dropped models too, and the projection clips widths on the model without the dropped blocks.
Timings use tiny run times: the tests check mechanisms, never speed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amc.cost.latency import LatencyConfig, build_latency_cost, cache_path
from amc.graph.blocks import find_blocks, records_alive
from amc.graph.discover import discover
from amc.pruning.depth import DepthCost, DepthKeep, canonical_keep, irrelevant_decisions
from envs.projection import BudgetProjector

pytestmark = pytest.mark.xdist_group("latency")

FAST = dict(passes=1, grid=3, min_run_time=0.001, model_run_time=0.005, calibration_keeps=(0.5,), calibration_random=2,
            calibration_rounds=2)


@pytest.fixture(scope="module")
def resnet(small_model):
    model, example = small_model("resnet20")
    graph = discover(model, example[:1])
    return model, graph, find_blocks(model, example[:1], graph=graph)


@pytest.fixture(scope="module")
def latency(resnet, tmp_path_factory):
    model, graph, blocks = resnet
    config = LatencyConfig(cache_dir=str(tmp_path_factory.mktemp("depth-latency")), **FAST)
    torch.set_num_threads(1)
    return build_latency_cost(model, graph, config, progress=False, blocks=blocks), config


def test_a_dropped_block_lowers_the_predicted_latency_by_its_modules(latency, resnet) -> None:
    table, _ = latency
    _, graph, blocks = resnet
    cost = DepthCost(table, blocks)
    rng = np.random.default_rng(0)
    for _ in range(5):
        keep = rng.uniform(0.3, 1.0, len(graph)).tolist()
        assert cost.cost(keep) == pytest.approx(table.cost(keep))  # nothing dropped: the table's prediction
        for block in (blocks[0], blocks[-1]):
            widths = canonical_keep(graph, blocks, keep, dropped=[block.name])
            dropped = cost.cost(DepthKeep(widths, [block.name]))
            # what the block's modules cost at these widths, and nothing else, leaves the prediction
            alive = np.array(records_alive(graph, [block]))
            out, inp = table._shapes(np.asarray(graph.channels(widths), dtype=np.float64))
            inside = table.without_records(1 - alive).value_shapes(out, inp) - table.alpha  # gamma * its entries
            assert inside > 0
            assert dropped == pytest.approx(table.value_shapes(out, inp) - inside)
            assert dropped < table.cost(widths)
    everything = DepthKeep([1.0] * len(graph), [b.name for b in blocks])
    assert cost.ratio(everything) < cost.ratio([1.0] * len(graph)) == pytest.approx(1.0)


def test_the_calibration_times_block_dropped_models_and_has_its_own_table(latency, resnet) -> None:
    table, config = latency
    _, graph, blocks = resnet
    points = [p for p in table.calibration if p.get("dropped")]
    assert len(points) >= 3 and {tuple(p["dropped"]) for p in points} >= {tuple(b.name for b in blocks)}
    assert all(p["measured_ms"] > 0 and p["table_ms"] > 0 for p in points)
    assert cache_path(graph, config, blocks) != cache_path(graph, config)  # the width-only table keeps its key
    assert cache_path(graph, config, blocks).is_file()


def test_projection_with_dropped_blocks_meets_a_latency_budget_widths_alone_do_not(latency, resnet) -> None:
    table, _ = latency
    _, graph, blocks = resnet
    cost = DepthCost(table, blocks)
    budget = 0.8
    projector = BudgetProjector(cost, budget)
    keep = [1.0] * len(graph)
    widths_only = projector.project(keep)
    names = [b.name for b in blocks[:3]]
    with_drops = projector.project(DepthKeep(keep, names))
    assert isinstance(with_drops, DepthKeep) and with_drops.dropped == tuple(sorted(names))
    assert cost.cost(with_drops) <= budget * cost.base * (1 + 1e-12)
    assert cost.cost(widths_only) <= budget * cost.base * (1 + 1e-12)
    inner = set(irrelevant_decisions(graph, blocks, dropped=names))
    assert inner and all(with_drops[t] == 1.0 for t in inner)  # canonical: widths inside a dropped block
    # the drops pay for part of the budget: some width outside the dropped blocks is kept wider
    assert any(with_drops[t] > widths_only[t] for t in range(len(graph)) if t not in inner)
