"""``--strategy tp-global`` and its keep vector on the digits cnn: feasible, Torch-Pruning's widths, one history row."""

from __future__ import annotations

import dataclasses

import pytest

from amc.context import ContextConfig, build_context
from amc.errors import ConfigError
from amc.pruning.global_pruning import global_pruning
from envs import BudgetProjector
from search.config import SearchConfig
from search.problem import SearchProblem
from search.runner import run_search
from search.strategies.tp_global import ORIGIN, tp_global_keep
from tests.search.helpers import history_rows

pytestmark = pytest.mark.usefixtures("cache_env")


@pytest.fixture(scope="module")
def ctx(amc_cache):
    return build_context(ContextConfig(cache_dir=str(amc_cache)), progress=False)


def _problem(ctx, resource: str, budget: float, *, min_keep: float = 0.2, max_keep: float = 1.0) -> SearchProblem:
    cost = ctx.cost_model(resource)
    return SearchProblem(graph=ctx.graph, cost_model=cost, evaluator=ctx.evaluator, history=None, strategy="tp-global",
                         projector=BudgetProjector(cost, budget, min_keep=min_keep, max_keep=max_keep))


@pytest.mark.parametrize(("resource", "budget", "min_keep"), [("flops", 0.3, 0.2), ("params", 0.4, 0.3)])
def test_the_keep_vector_is_feasible_and_is_torch_prunings_widths(ctx, resource, budget, min_keep):
    problem = _problem(ctx, resource, budget, min_keep=min_keep)
    keep = tp_global_keep(problem, ctx)
    assert keep is not None and problem.projector.feasible(keep)
    assert budget - 0.1 < problem.cost_model.ratio(keep) <= budget + 1e-12
    assert min(keep) >= min_keep
    tp = global_pruning(ctx.model, ctx.graph, ctx.example(2), budget=budget, ratio_of=problem.cost_model.ratio,
                        min_keep=min_keep)
    assert ctx.graph.channels(keep) == tp.units  # the projection kept Torch-Pruning's widths
    assert ctx.graph.channels(keep) != ctx.graph.channels([1.0] * len(ctx.graph))


def test_max_keep_below_one_is_projected_into_the_search_space(ctx):
    problem = _problem(ctx, "flops", 0.5, max_keep=0.6)
    keep = tp_global_keep(problem, ctx)
    assert keep is not None and problem.projector.feasible(keep) and max(keep) <= 0.6 + 1e-9


def test_the_strategy_records_one_baseline_row(context_config, tmp_path):
    out = tmp_path / "run"
    config = SearchConfig(budget=0.5, strategy="tp-global", evaluations=5, out=str(out), progress=False,
                          export=False, report=False, context=context_config)
    result = run_search(config)
    assert not result.interrupted
    rows = history_rows(out / "history.csv")
    assert [r["origin"] for r in rows] == [ORIGIN]  # a single policy, whatever --evaluations says; it is the baseline
    assert rows[0]["strategy"] == "tp-global" and float(rows[0]["cost_ratio"]) <= 0.5 + 1e-9
    run_search(dataclasses.replace(config, resume=True))  # a resumed run does not evaluate it again
    assert history_rows(out / "history.csv") == rows


def test_the_strategy_refuses_in_one_line_where_torch_pruning_gives_nothing(context_config, tmp_path, monkeypatch):
    monkeypatch.setattr("amc.pruning.global_pruning.global_pruning", lambda *args, **kwargs: None)
    config = SearchConfig(budget=0.5, strategy="tp-global", evaluations=1, out=str(tmp_path / "run"), progress=False,
                          export=False, report=False, context=context_config)
    with pytest.raises(ConfigError, match=r"--strategy tp-global: .* budget 0.5 .*use --strategy uniform") as info:
        run_search(config)
    assert "\n" not in str(info.value)
