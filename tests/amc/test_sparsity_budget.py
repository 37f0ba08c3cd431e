"""The sparsity budget (amc.sparsity.budget) and OWL's layer ratios (amc.sparsity.owl)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amc.errors import BudgetError, ConfigError
from amc.sparsity import (
    NM,
    SparsityBudget,
    calibrate,
    discover_sparse,
    outlier_ratios,
    owl,
    owl_sparsities,
)
from tests.amc.test_sparsity_layers import PlainLM, tiny_gpt2, tiny_llama, token_batches


@pytest.fixture(scope="module")
def llama_layout():
    return discover_sparse(tiny_llama(), per="layer")  # layers of 3 sizes: a weighted average differs from a mean


@pytest.mark.parametrize("seed", range(5))
def test_projection_hits_the_weighted_average_exactly_within_bounds(llama_layout, seed: int) -> None:
    budget = SparsityBudget(llama_layout, budget=0.35, min_sparsity=0.1, max_sparsity=0.9)
    wanted = np.random.default_rng(seed).uniform(-0.5, 1.5, len(llama_layout.units)).tolist()
    got = budget.project(wanted)
    assert budget.average(got) == pytest.approx(0.65, abs=1e-12)
    assert all(0.1 <= s <= 0.9 for s in got)
    free = [g - w for g, w in zip(got, wanted) if 0.1 < g < 0.9]
    assert free and max(free) - min(free) < 1e-9  # one shift for every unclipped unit: the weighted L2 projection
    counts = budget.counts(got)
    assert sum(counts.values()) == round(0.65 * llama_layout.total)
    sizes = {x.name: x.numel for x in llama_layout.layers}
    assert all(abs(counts[u.name] - s * sizes[u.name]) < 1 for u, s in zip(llama_layout.units, got))


def test_a_policy_at_the_target_is_left_as_it_is_and_uniform_is_the_target(llama_layout) -> None:
    budget = SparsityBudget(llama_layout, budget=0.5)
    assert budget.uniform() == pytest.approx([0.5] * len(llama_layout.units), abs=1e-12)
    sizes = np.array(budget.sizes, dtype=float)
    wanted = 0.5 + 0.1 * np.sign(np.arange(len(sizes)) % 2 - 0.5)
    wanted += (0.5 - (wanted * sizes).sum() / sizes.sum())  # already at the average
    assert budget.project(wanted.tolist()) == pytest.approx(wanted.tolist(), abs=1e-12)


def test_bad_budgets_and_policies_are_refused(llama_layout) -> None:
    with pytest.raises(ConfigError, match="budget"):
        SparsityBudget(llama_layout, budget=0.0)
    with pytest.raises(BudgetError, match="outside"):
        SparsityBudget(llama_layout, budget=0.02, max_sparsity=0.95).project([0.5] * len(llama_layout.units))
    with pytest.raises(ConfigError, match="expected 14 sparsities"):
        SparsityBudget(llama_layout, budget=0.5).project([0.5])
    with pytest.raises(ConfigError, match="min_sparsity"):
        SparsityBudget(llama_layout, budget=0.5, min_sparsity=0.6, max_sparsity=0.4)


def test_uniform_nm_at_half_is_two_of_four_everywhere(llama_layout) -> None:
    budget = SparsityBudget(llama_layout, budget=0.5)
    assert budget.project_levels([0.5] * len(llama_layout.units)) == [NM(2, 4)] * len(llama_layout.units)


@pytest.mark.parametrize("seed", range(5))
def test_nm_levels_always_reach_the_budget_and_stay_near_what_was_asked(llama_layout, seed: int) -> None:
    budget = SparsityBudget(llama_layout, budget=0.5, levels=("dense", "2:4", "1:4"))
    wanted = np.random.default_rng(seed).uniform(0, 0.8, len(llama_layout.units)).tolist()
    levels = budget.project_levels(wanted)
    assert all(level in budget.levels for level in levels)
    assert budget.average(levels) >= 0.5 - 1e-12
    # No unit can go one level denser without missing the budget, unless it already got at most what it asked.
    for i, (level, w) in enumerate(zip(levels, wanted)):
        j = budget.levels.index(level)
        if j and level.sparsity > w:
            denser = list(levels)
            denser[i] = budget.levels[j - 1]
            assert budget.average(denser) < 0.5 - 1e-12


def test_levels_that_cannot_reach_the_budget_or_fit_a_layer_are_refused() -> None:
    layout = discover_sparse(PlainLM(), exclude=["out"])  # inputs of 16 and 32
    with pytest.raises(BudgetError, match="unreachable"):
        SparsityBudget(layout, budget=0.3, levels=("dense", "2:4")).project_levels([0.5, 0.5])
    budget = SparsityBudget(layout, budget=0.5, levels=("dense", "2:4", "1:3"))
    assert budget.allowed_levels() == [(NM(1, 1), NM(2, 4))] * 2  # 16 and 32 inputs are no multiple of 3


@pytest.mark.parametrize("build, per", [(tiny_llama, "block"), (tiny_llama, "layer"), (tiny_gpt2, "block")])
def test_owl_average_is_the_target_and_equal_blocks_follow_the_reference_formula(build, per) -> None:
    model = build()
    layout = discover_sparse(model, per=per)
    stats = calibrate(model, layout, token_batches())
    budget = SparsityBudget(layout, budget=0.3)
    got = owl(model, budget, stats)
    assert budget.average(got) == pytest.approx(0.7, abs=1e-12)
    assert max(got) - min(got) == pytest.approx(0.16, abs=1e-9) or per == "layer"  # target +- lambda
    ratios = outlier_ratios(model, layout, stats)
    if per == "block":  # equal sizes: luuyin/OWL prune_wanda_outlier's mapping, unchanged by the projection
        r = np.array(ratios)
        scaled = (r - r.min()) * (1 / (r.max() - r.min()) * 0.08 * 2)
        density = scaled - scaled.mean() + (1 - 0.7)
        assert got == pytest.approx((1 - density).tolist(), abs=1e-12)


def test_outlier_ratio_is_the_share_of_wanda_scores_above_m_times_their_mean() -> None:
    model = tiny_llama()
    layout = discover_sparse(model)
    stats = calibrate(model, layout, token_batches())
    scores = torch.cat([(model.get_submodule(name).weight.abs() * stats[name].norms).flatten()
                        for name in layout.units[1].members]).detach()
    want = float((scores > scores.mean() * 5).sum()) / scores.numel()  # check_outlier_mean(W_metric, 5) / 100
    assert outlier_ratios(model, layout, stats)[1] == pytest.approx(want)
    assert owl_sparsities(SparsityBudget(layout, budget=0.5), [0.1, 0.1]) == pytest.approx([0.5, 0.5])
