"""Depth + width search (``--depth``): block decisions in random search and Optuna, exact costs of the
pruned-and-dropped models, one evaluation per candidate, policy.json v2, history.csv's dropped column, apply.

The base model is a seeded (untrained) resnet20 saved as a checkpoint: the tests check what is searched,
costed and rebuilt, never which weights training produced.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from amc.apply import apply_policy
from amc.context import ContextConfig, build_context
from amc.errors import ConfigError
from amc.evaluation.evaluator import EvalConfig
from amc.graph.blocks import no_blocks_message
from amc.graph.probe import counting_flops
from amc.pruning.depth import DepthCost, DepthKeep, drop_blocks, irrelevant_decisions
from amc.pruning.policy import FORMAT, FORMAT_V1, Policy
from amc.pruning.pruner import prune_model
from envs import BudgetProjector
from search.config import SearchConfig
from search.history import COLUMNS, HistoryWriter, read_history
from search.problem import SearchProblem
from search.runner import run_search
from tests.conftest import build_small_model

torch.set_num_threads(1)
BUDGET = 0.4
TINY_EVAL = EvalConfig(val_limit=64, bn_batches=1, bn_batch_size=32)


@pytest.fixture(scope="module")
def depth_config(tmp_path_factory: pytest.TempPathFactory) -> ContextConfig:
    model, _ = build_small_model("resnet20")  # (1, 16, 16) inputs; the digits are 8 x 8: it adapts by pooling
    path = tmp_path_factory.mktemp("depth") / "resnet20.pt"
    torch.save(model.state_dict(), path)
    return ContextConfig(model="resnet20", dataset="digits", checkpoint=str(path), eval=TINY_EVAL, depth=True)


@pytest.fixture(scope="module")
def ctx(depth_config):
    return build_context(depth_config, progress=False)


def search(out: Path, ctx, strategy: str, evaluations: int = 10, budget: float = BUDGET, **kwargs):
    config = SearchConfig(budget=budget, strategy=strategy, evaluations=evaluations, out=str(out), progress=False,
                          context=ctx.config, baselines=False, report=False, export=False, **kwargs)
    return run_search(config, context=ctx)


def measured_flops(ctx, keep, dropped) -> int:
    pruned = drop_blocks(prune_model(ctx.model, ctx.graph, list(keep)), dropped, inplace=True)
    with counting_flops() as counter:
        pruned(ctx.example(1))
    return counter.get_total_flops()


def test_context_finds_the_blocks_and_costs_them(ctx) -> None:
    assert len(ctx.blocks) == 7 and isinstance(ctx.cost_model(), DepthCost)
    assert isinstance(ctx.cost_model("params"), DepthCost)


@pytest.mark.parametrize("strategy", ["random", "optuna"])
def test_search_drops_blocks_at_exact_costs(tmp_path: Path, ctx, strategy: str) -> None:
    result = search(tmp_path / strategy, ctx, strategy)
    records = read_history(tmp_path / strategy / "history.csv")
    assert len(records) == 10
    assert sum(bool(r.dropped) for r in records) >= 3  # blocks are decisions
    keys = set()
    for record in records:
        assert record.cost_ratio <= BUDGET + 1e-9
        irrelevant = irrelevant_decisions(ctx.graph, ctx.blocks, dropped=record.dropped)
        assert all(record.keep[d] == 1.0 for d in irrelevant)  # canonical: one policy per model
        keys.add((ctx.graph.candidate_key(record.keep, "channel"), frozenset(record.dropped)))
    assert len(keys) == len(records)  # no candidate evaluated twice
    for record in [r for r in records if r.dropped][:2]:
        assert record.cost == measured_flops(ctx, record.keep, record.dropped)
    policy = Policy.load(tmp_path / strategy / "policy.json")
    assert policy.dropped == result.best.dropped
    assert policy.metrics["flops_ratio"] == pytest.approx(result.best.cost_ratio)


def test_widths_inside_a_dropped_block_cost_no_evaluation(tmp_path: Path, ctx) -> None:
    cost = ctx.cost_model()
    problem = SearchProblem(graph=ctx.graph, cost_model=cost, projector=BudgetProjector(cost, BUDGET),
                            evaluator=ctx.evaluator, history=None, strategy="test")
    block = ctx.blocks[1]
    inner = irrelevant_decisions(ctx.graph, ctx.blocks, dropped=[block.name])
    assert inner
    a = problem.projector.project(DepthKeep([0.5] * len(ctx.graph), [block.name]))
    b = list(a)
    for d in inner:
        b[d] = 0.3
    b = DepthKeep(b, [block.name])
    assert problem.key(a) == problem.key(b) != problem.key(list(a))
    first, second = problem.evaluate_keeps([a, b])
    assert not first.cached and second.cached and second.accuracy == first.accuracy
    assert second.keep == first.keep and second.dropped == (block.name,)


def test_policy_v2_round_trip_and_v1_still_loads(tmp_path: Path) -> None:
    policy = Policy(keep={"a": 0.5, "b": 1.0}, dropped=["layers.2", "layers.1"])
    assert policy.dropped == ("layers.1", "layers.2")
    data = json.loads(policy.to_json())
    assert data["format"] == FORMAT == "amc-policy/2" and data["dropped"] == ["layers.1", "layers.2"]
    assert Policy.load(policy.save(tmp_path / "p.json")) == policy
    old = {k: v for k, v in data.items() if k != "dropped"}
    old["format"] = FORMAT_V1
    assert Policy.from_dict(old).dropped == ()
    with pytest.raises(Exception, match="unknown field"):
        Policy.from_dict({**old, "dropped": ["layers.1"]})


def test_history_dropped_column_round_trip_and_old_files(tmp_path: Path) -> None:
    from search.history import ORIGIN_COLUMNS, Record

    record = Record(0, "random", 0, 0.5, 1.0, 10.0, 0.3, 0.5, False, 0.1, 0.0,
                    DepthKeep([1.0, 0.5], ["layers.1"]))
    writer = HistoryWriter(tmp_path / "history.csv")
    writer.append(record)
    writer.close()
    assert read_history(tmp_path / "history.csv") == [record]
    assert read_history(tmp_path / "history.csv")[0].dropped == ("layers.1",)
    old = tmp_path / "old.csv"
    old.write_text(",".join(ORIGIN_COLUMNS) + '\n0,random,0,0.5,1.0,10.0,0.3,0.5,0,0.1000,0.000,"[0.5, 0.25]",0,bn,search,0\n')
    (loaded,) = read_history(old)
    assert loaded.dropped == () and loaded.keep == (0.5, 0.25)
    HistoryWriter(old).close()  # a resumed run upgrades the file to the current layout
    assert old.read_text().splitlines()[0] == ",".join(COLUMNS)


def test_apply_policy_reproduces_a_depth_policy(tmp_path: Path, ctx) -> None:
    search(tmp_path / "run", ctx, "random", evaluations=6)
    policy = Policy.load(tmp_path / "run" / "policy.json")
    if not policy.dropped:  # the best of six need not drop: apply one that does
        record = next(r for r in read_history(tmp_path / "run" / "history.csv") if r.dropped)
        problem_policy = Policy.from_ratios(ctx.graph, record.keep, resource="flops", budget=BUDGET)
        policy = Policy(**{**problem_policy._replace(), "meta": policy.meta,
                           "metrics": {"val_accuracy": record.accuracy, "cost_ratio": record.cost_ratio}})
    applied = apply_policy(policy, export=False, progress=False)
    assert applied.val_accuracy == policy.metrics["val_accuracy"]
    assert applied.cost_ratio == pytest.approx(policy.metrics["cost_ratio"])
    assert all(type(applied.model.get_submodule(name)).__name__ == "Identity" for name in policy.dropped)


def test_a_model_without_blocks_says_so_in_one_line(cache_env) -> None:
    with pytest.raises(ConfigError) as info:
        build_context(ContextConfig(model="cnn", dataset="digits", depth=True, eval=TINY_EVAL), progress=False)
    assert str(info.value) == no_blocks_message("cnn") and "\n" not in str(info.value)


def test_a_model_without_blocks_is_refused_before_its_base_model_is_trained(cache_env, monkeypatch) -> None:
    import amc.context

    def no_training(*args, **kwargs):
        raise AssertionError("the base model was trained before --depth was refused")

    monkeypatch.setattr(amc.context, "load_or_train", no_training)
    with pytest.raises(ConfigError) as info:
        build_context(ContextConfig(model="cnn", dataset="digits", depth=True, eval=TINY_EVAL), progress=False)
    assert str(info.value) == no_blocks_message("cnn")


def test_depth_and_latency_search_runs_end_to_end(tmp_path, depth_config) -> None:
    import dataclasses

    from amc.cost.latency import LatencyConfig

    fast = LatencyConfig(batch_size=8, passes=1, grid=3, min_run_time=0.001, model_run_time=0.005,
                         calibration_keeps=(0.5,), calibration_random=2, calibration_rounds=2,
                         cache_dir=str(tmp_path / "tables"))
    context = dataclasses.replace(depth_config, resource="latency", latency=fast)
    ctx = build_context(context, progress=False)
    # The reachable floor of a measured latency table depends on the machine and its load (0.40 on a busy one):
    # the budget sits well above it, the test is about the search running end to end on a depth+latency model.
    budget = 0.7
    result = search(tmp_path / "run", ctx, "random", evaluations=6, budget=budget)
    rows = read_history(tmp_path / "run" / "history.csv")
    assert len(rows) == 6
    cost = ctx.cost_model()
    assert isinstance(cost, DepthCost) and cost.resource == "latency"
    for row in rows:  # every candidate meets the predicted-latency budget, its dropped blocks counted
        assert row.cost_ratio == pytest.approx(cost.ratio(row.keep)) and row.cost_ratio <= budget + 1e-9
    assert Policy.load(tmp_path / "run" / "policy.json").resource == "latency" and result.best is not None


def test_depth_needs_channel_granularity() -> None:
    ContextConfig(model="resnet20", resource="latency", depth=True)  # the latency table covers dropped blocks
    with pytest.raises(ConfigError, match="--depth needs --granularity channel"):
        ContextConfig(model="resnet20", depth=True, eval=EvalConfig(granularity="weight"))


def test_the_registered_env_takes_depth(depth_config) -> None:
    import envs

    env = envs.make_env(model="resnet20", dataset="digits", checkpoint=depth_config.checkpoint, depth=True,
                        budget=BUDGET, val_limit=64, bn_batches=1, bn_batch_size=32)
    assert env.spec.max_episode_steps == env.unwrapped.max_steps == 12 + 7
    obs, _ = env.reset(seed=0)
    assert obs.shape == (len(envs.OBS_FEATURES) + 2,)
    terminated = False
    while not terminated:
        obs, _, terminated, truncated, info = env.step(env.action_space.sample())
        assert not truncated
    assert info["cost_ratio"] <= BUDGET + 1e-9


def test_a_resumed_depth_search_keeps_its_dropped_blocks(tmp_path: Path, ctx) -> None:
    out = tmp_path / "optuna"
    search(out, ctx, "optuna", evaluations=6)
    before = read_history(out / "history.csv")
    (out / "study.db").unlink()  # the study lost: its trials are rebuilt from history.csv, drops included
    search(out, ctx, "optuna", evaluations=8, resume=True)
    after = read_history(out / "history.csv")
    assert after[:6] == before and len(after) == 8
    import optuna

    study = optuna.load_study(study_name=f"amc-search/{out.name}", storage=f"sqlite:///{out / 'study.db'}")
    rebuilt = {t.user_attrs["step"]: t for t in study.trials if "step" in t.user_attrs}
    for record in before:
        params = rebuilt[record.step].params
        assert {n for n, v in params.items() if n.startswith("drop:") and v} == {f"drop:{b}" for b in record.dropped}


def test_ddpg_with_depth_runs_as_many_episodes_as_evaluations_and_learns_from_the_baselines(tmp_path: Path,
                                                                                              ctx) -> None:
    """Episodes with dropped blocks are shorter: the agent stops after ``evaluations`` episodes, not steps; the
    baselines go into its replay buffer as demonstrations (their block actions included)."""
    config = SearchConfig(budget=BUDGET, strategy="ddpg", evaluations=6, out=str(tmp_path / "ddpg"), progress=False,
                          context=ctx.config, baselines=True, select=None, report=False, export=False,
                          warmup=3)
    run_search(config, context=ctx)
    records = read_history(tmp_path / "ddpg" / "history.csv")
    own = [r for r in records if r.origin == "search"]
    assert len(own) == 6
    assert {r.origin for r in records} >= {"baseline:uniform"}
    assert all(r.cost_ratio <= BUDGET + 1e-9 for r in records)


def test_reconstruct_score_skips_the_layers_of_dropped_blocks(depth_config) -> None:
    import dataclasses

    config = dataclasses.replace(depth_config, eval=dataclasses.replace(TINY_EVAL, score="reconstruct"))
    rctx = build_context(config, progress=False)
    cost = rctx.cost_model()
    problem = SearchProblem(graph=rctx.graph, cost_model=cost, projector=BudgetProjector(cost, BUDGET),
                            evaluator=rctx.evaluator, history=None, strategy="test")
    keep = problem.projector.project(DepthKeep([0.6] * len(rctx.graph), [rctx.blocks[2].name, rctx.blocks[5].name]))
    (result,) = problem.evaluate_keeps([keep])
    assert 0.0 <= result.accuracy <= 1.0 and result.dropped == (rctx.blocks[2].name, rctx.blocks[5].name)


def test_the_depth_bench_searches_at_the_budget_that_dropping_reaches(ctx, depth_config) -> None:
    """``bench.py depth`` raises a budget only to the smallest its row's decisions reach: with depth, every width at
    min_keep and every block dropped (it used to raise the depth row to the widths' floor)."""
    from search.bench.depth import reachable_budget, smallest_budget

    widths = build_context(dataclasses.replace(depth_config, depth=False), progress=False)
    width_floor, depth_floor = smallest_budget(widths, 0.2), smallest_budget(ctx, 0.2)
    assert depth_floor < width_floor
    assert depth_floor == pytest.approx(BudgetProjector(ctx.cost_model(), depth_floor * 1.0001).smallest_budget)
    between = (width_floor + depth_floor) / 2
    assert reachable_budget(ctx, between, 0.2) == between  # dropping reaches it: searched as given
    assert reachable_budget(widths, between, 0.2) == pytest.approx(width_floor * 1.001)
    assert reachable_budget(ctx, depth_floor / 2, 0.2) == pytest.approx(depth_floor * 1.001)
