"""Sensitivity analysis: curves measured on the trained digits cnn, CSV round trip, greedy allocation."""

from __future__ import annotations

import numpy as np
import pytest

from amc.cost.analytic import FlopsCost
from amc.errors import ConfigError
from amc.evaluation.evaluator import EvalConfig, PolicyEvaluator
from amc.graph.discover import discover
from amc.analysis.sensitivity import SensitivityCurve, greedy_allocation, plot_curves, read_csv, sensitivity_curves, write_csv
from envs.projection import BudgetProjector

# Its module fixtures are costly: one xdist worker runs the whole module (make test uses --dist loadgroup).
pytestmark = pytest.mark.xdist_group("sensitivity")


@pytest.fixture(scope="module")
def setup(trained_cnn, digits):
    model, _ = trained_cnn
    graph = discover(model, digits.train.tensors[0][:1])
    return graph, PolicyEvaluator(model, graph, digits, EvalConfig())


@pytest.fixture(scope="module")
def curves(setup):
    graph, evaluator = setup
    return sensitivity_curves(evaluator, graph, (0.2, 0.5), progress=False)


def test_curves_are_single_layer_prunings(setup, curves):
    graph, evaluator = setup
    assert [c.layer for c in curves] == list(graph.names)
    base = evaluator.evaluate([1.0] * len(graph)).accuracy
    for t, curve in enumerate(curves):
        assert curve.keeps == (0.2, 0.5, 1.0)
        assert curve.accuracy[-1] == base
        alone = [1.0] * len(graph)
        alone[t] = 0.2
        assert curve.accuracy[0] == evaluator.evaluate(alone).accuracy
    # Cutting a layer to 20% hurts somewhere, and never helps by much (BN is recalibrated each time).
    assert min(c.accuracy[0] for c in curves) < base - 0.02


def test_csv_round_trip_and_foreign_curves(curves, setup, tmp_path, small_model):
    graph, _ = setup
    path = write_csv(curves, tmp_path / "sensitivity.csv")
    again = read_csv(path, graph)
    assert [c.layer for c in again] == [c.layer for c in curves]
    for a, b in zip(again, curves):
        assert a.keeps == b.keeps and np.allclose(a.accuracy, b.accuracy, atol=1e-6)
    other, example = small_model("resnet20")
    with pytest.raises(ConfigError, match="not this model's"):
        read_csv(path, discover(other, example[:1]))
    (tmp_path / "bad.csv").write_text("layer,keep\nx,abc\n")
    with pytest.raises(ConfigError, match="cannot read sensitivity curves"):
        read_csv(tmp_path / "bad.csv")


def test_plot_has_one_curve_per_layer(curves, tmp_path):
    path = plot_curves(curves, tmp_path / "s.png")
    assert path.stat().st_size > 10_000


def test_greedy_allocation_meets_the_budget_and_spares_sensitive_layers(setup):
    graph, _ = setup
    cost = FlopsCost(graph)
    n = len(graph)
    keeps = (0.1, 0.5, 1.0)
    flat = SensitivityCurve("flat", keeps, (0.95, 0.96, 0.96))
    steep = SensitivityCurve("steep", keeps, (0.10, 0.50, 0.96))
    # Even layers are insensitive, odd ones sensitive: the allocation must prune the even ones harder.
    curves = [flat if t % 2 == 0 else steep for t in range(n)]
    for budget in (0.3, 0.5, 0.7):
        projector = BudgetProjector(cost, budget)
        keep = greedy_allocation(curves, cost, projector)
        assert cost.ratio(keep) <= budget + 1e-9
        assert min(keep) >= projector.min_keep - 1e-12
        even = np.mean([k for t, k in enumerate(keep) if t % 2 == 0])
        odd = np.mean([k for t, k in enumerate(keep) if t % 2 == 1])
        assert even < odd
    with pytest.raises(ConfigError, match="sensitivity curves"):
        greedy_allocation(curves[:-1], cost, BudgetProjector(cost, 0.5))


def test_greedy_allocation_follows_the_curves_with_coarse_rounding(trained_cnn, digits):
    model, _ = trained_cnn
    graph = discover(model, digits.train.tensors[0][:1], round_to=8)
    cost = FlopsCost(graph)
    keeps = (0.1, 0.5, 1.0)
    curves = [SensitivityCurve("x", keeps, (0.95, 0.96, 0.96) if t % 2 == 0 else (0.10, 0.50, 0.96))
              for t in range(len(graph))]
    projector = BudgetProjector(cost, 0.5)
    keep = greedy_allocation(curves, cost, projector)
    assert cost.ratio(keep) <= 0.5 + 1e-9
    assert keep != projector.project([1.0] * len(graph))  # not just the layer-order clip
    assert keep[0] < 1.0  # the flat first layer is cut, although 0.05 steps do not change 16 channels by 8


def test_bad_keep_ratios_are_refused(setup):
    graph, evaluator = setup
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        sensitivity_curves(evaluator, graph, (0.0, 0.5), progress=False)
