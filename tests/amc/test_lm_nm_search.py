"""A search over N:M levels per layer on the built-in LM (issue 36): dense, 2:4 or 1:4 per unit at 50% average.

A tiny ``tiny-lm`` (2 blocks, width 32, 12 linear layers) trained 10 steps on a capped standard-library corpus;
one decision per linear layer, so that levels other than 2:4 everywhere can meet the 50% average. Every check
counts from the weights: each layer's N:M pattern (exactly N nonzero weights in every group of M inputs of a row)
and the average sparsity.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from amc.data.lm_tokens import LMDataConfig, load_lm_data
from amc.errors import BudgetError, ConfigError
from amc.evaluation.lm_evaluator import LMEvalConfig
from amc.lm_context import LMContextConfig, build_lm_context
from amc.lm_train import LMTrainConfig
from amc.pruning.policy import Policy
from amc.sparsity import NM, SparsityBudget, parse_level, zeros_per_layer
from envs import PruningEnv
from envs.sparsity_projection import SparsityProjector
from search.bench.lm import NM_LEVELS, nm_search_supported
from search.config import SearchConfig
from search.history import read_history
from search.launch import resolve_options
from search.lm import OWL
from search.problem import SearchProblem
from search.runner import run_search
from search.starts import UNIFORM
from search.strategies.uniform import uniform_keep

BUDGET = 0.5
EVALUATIONS = 10
LEVEL_KEEPS = {1.0: "dense", 0.5: "2:4", 0.25: "1:4"}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    cache = tmp_path_factory.mktemp("lm-nm-cache")
    data_config = LMDataConfig(seq_len=32, vocab_size=300, calibration=0.2, heldout=0.2, max_bytes=120_000)
    config = LMContextConfig(model="tiny-lm", model_kwargs=(("dim", 32), ("depth", 2), ("heads", 2)),
                             data=data_config, cache_dir=str(cache), per="layer", levels=NM_LEVELS,
                             train=LMTrainConfig(steps=10, batch_size=8, warmup=2, checkpoint_every=0,
                                                 eval_windows=4),
                             eval=LMEvalConfig(criterion="wanda", calibration_windows=8, heldout_windows=16))
    return build_lm_context(config, data=load_lm_data(data_config, cache_dir=cache), progress=False)


def projector(ctx, budget: float = BUDGET) -> SparsityProjector:
    return SparsityProjector(ctx.cost_model(), budget, min_keep=0.2, max_keep=1.0)


def counted(ctx, keep) -> tuple[dict[str, str], float]:
    """Each layer's N:M level read from its masked weights (every group of M inputs of every row holds exactly
    N nonzero weights), and the average sparsity counted from the zeros."""
    levels = {}
    with ctx.evaluator.sparsified(list(keep)) as model:
        zeros = zeros_per_layer(model, ctx.layout)
        for layer in ctx.layout.layers:
            weight = model.get_submodule(layer.name).weight.detach()  # (out, in)
            if zeros[layer.name] == 0:
                levels[layer.name] = "dense"
                continue
            nonzero = (weight.reshape(layer.out_features, -1, 4) != 0).sum(dim=-1)  # (out, in / 4)
            assert torch.all(nonzero == nonzero.flatten()[0]), f"{layer.name} is not N:4 in every group"
            levels[layer.name] = f"{int(nonzero.flatten()[0])}:4"
    return levels, sum(zeros.values()) / ctx.layout.total


def test_levels_are_a_context_setting_checked_at_the_edge() -> None:
    assert nm_search_supported()
    config = LMContextConfig(levels=("1:4", "dense", " 2 : 4 "))
    assert config.levels == ("dense", "2:4", "1:4") and LMContextConfig().levels == ()
    with pytest.raises(ConfigError, match="'2-4'"):
        LMContextConfig(levels=("dense", "2-4"))
    with pytest.raises(ConfigError, match="same share"):
        LMContextConfig(levels=("2:4", "4:8"))


def test_nm_levels_option_reaches_the_context_and_refuses_bad_values(capsys) -> None:
    config = resolve_options(["--model", "tiny-lm", "--dataset", "code", "--nm-levels", "1:4,dense,2:4"]).to_config()
    assert config.context.levels == ("dense", "2:4", "1:4")
    with pytest.raises(SystemExit):
        resolve_options(["--model", "tiny-lm", "--dataset", "code", "--nm-levels", "dense,2-4"])
    assert "--nm-levels: must be N:M levels such as dense,2:4,1:4" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--nm-levels 2:4 is a language model's"):
        resolve_options(["--nm-levels", "2:4"]).to_config()


def test_projection_maps_any_keep_ratios_to_levels_at_exactly_the_budget(ctx) -> None:
    cost, p = ctx.cost_model(), projector(ctx)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(5):
        keep = p.project(rng.uniform(0.2, 1.0, len(ctx.graph)).tolist())  # an agent's continuous actions
        assert set(keep) <= set(LEVEL_KEEPS)
        assert cost.cost(keep) == ctx.layout.total * BUDGET and p.feasible(keep)
        levels, average = counted(ctx, keep)
        assert levels == {layer: LEVEL_KEEPS[k] for unit, k in zip(ctx.layout.units, keep) for layer in unit.members}
        assert average == 1 - BUDGET
        assert ctx.graph.level_names(keep) == {u.name: LEVEL_KEEPS[k] for u, k in zip(ctx.layout.units, keep)}
        seen.add(tuple(keep))
    assert len(seen) > 1  # the levels are spread, not 2:4 everywhere
    # the uniform baseline at 50% is 2:4 everywhere
    problem = SearchProblem(graph=ctx.graph, cost_model=cost, projector=p, evaluator=ctx.evaluator, history=None,
                            strategy="uniform", criterion="wanda", granularity="weight")
    assert uniform_keep(problem) == [0.5] * len(ctx.graph)
    # a budget the sparsest level cannot reach is refused when the projector is built
    with pytest.raises(BudgetError):
        projector(ctx, 0.2)
    with pytest.raises(ConfigError, match="min_keep"):
        SparsityProjector(cost, BUDGET, min_keep=0.6, max_keep=0.9)


def test_exact_projection_reaches_the_target_where_the_greedy_snap_overshoots(ctx) -> None:
    """``project_levels`` may leave the average above the target; ``project_levels_exact`` meets it exactly."""
    budget = SparsityBudget(ctx.layout, BUDGET, levels=NM_LEVELS)
    wanted = [0.0, 0.0, 0.75] + [0.5] * (len(ctx.graph) - 3)
    greedy, exact = budget.project_levels(wanted), budget.project_levels_exact(wanted)
    assert budget.average(greedy) > 1 - BUDGET
    assert budget.average(exact) == 1 - BUDGET
    assert budget.project_levels_exact([0.5] * len(ctx.graph)) == [parse_level("2:4")] * len(ctx.graph)


def test_search_over_levels_records_exact_level_policies(ctx, tmp_path) -> None:
    config = SearchConfig(budget=BUDGET, strategy="optuna", evaluations=EVALUATIONS, out=str(tmp_path / "nm"),
                          progress=False, export=False, report=False, seed=0, context=ctx.config)
    result = run_search(config, context=ctx)
    rows = read_history(result.out / "history.csv")
    assert [r.origin for r in rows[:2]] == [UNIFORM, OWL] and len(rows) == 2 + EVALUATIONS
    assert rows[0].keep == (0.5,) * len(ctx.graph)  # uniform: 2:4 everywhere
    for row in rows:
        assert set(row.keep) <= set(LEVEL_KEEPS) and row.cost_ratio == BUDGET
    assert len({r.keep for r in rows}) > 2  # the search moves levels between layers
    best = list(result.best.keep)
    levels, average = counted(ctx, best)
    assert average == 1 - BUDGET
    assert levels == {layer: LEVEL_KEEPS[k] for unit, k in zip(ctx.layout.units, best) for layer in unit.members}
    policy = Policy.load(result.out / "policy.json")
    assert policy.ratios(ctx.graph) == best
    assert policy.meta["levels"] == {unit.name: LEVEL_KEEPS[k] for unit, k in zip(ctx.layout.units, best)}
    saved = read_history(result.out / "history.csv")
    assert saved == rows
    # resume of the run with other levels is refused in one line
    other = dataclasses.replace(ctx.config, levels=("dense", "2:4"))
    with pytest.raises(ConfigError, match=r"context\.levels"):
        run_search(dataclasses.replace(config, resume=True, context=other), context=ctx)


@pytest.mark.parametrize("exact", [False, True])
def test_an_episode_of_the_environment_ends_on_levels_within_the_budget(ctx, exact) -> None:
    # exact: the search problem's projector, as the RL strategies pass it (the episode ends on the budget)
    env = PruningEnv(ctx.graph, ctx.cost_model(), ctx.evaluator, budget=BUDGET, min_keep=0.2, criterion="wanda",
                     granularity="weight", projector=projector(ctx) if exact else None)
    env.reset(seed=0)
    rng = np.random.default_rng(1)
    done, info = False, {}
    while not done:
        _, _, done, _, info = env.step(rng.uniform(-1, 1, 1).astype(np.float32))
    levels = ctx.graph.unit_levels(info["keep"])
    assert all(isinstance(x, NM) and str(x) in NM_LEVELS for x in levels)
    if exact:
        assert info["cost_ratio"] == pytest.approx(BUDGET, abs=1e-12)
    else:
        assert info["cost_ratio"] <= BUDGET  # AMC's clipping on the levels' counts: feasible, not exact
    _, average = counted(ctx, info["keep"])
    assert average == pytest.approx(1 - info["cost_ratio"])
