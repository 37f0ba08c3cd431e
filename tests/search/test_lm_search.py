"""A per-block sparsity search on the built-in LM through the search machinery (issue 36).

A tiny ``tiny-lm`` (2 blocks, width 32) trained 10 steps on a capped standard-library corpus (its blocks barely
matter yet: this checks the machinery, not the allocation); 50% average
sparsity with Wanda; Optuna and random search of 10 evaluations each after the uniform and OWL baselines.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from amc.cost.sparsity_cost import SparsityCost
from amc.errors import ConfigError
from amc.data.lm_tokens import LMDataConfig, load_lm_data
from amc.evaluation.lm_evaluator import LMEvalConfig, SparsityEvaluator
from amc.lm_context import LMContextConfig, build_lm_context
from amc.lm_train import LMTrainConfig
from amc.pruning.policy import Policy
from amc.sparsity import dense_weights, masked_per_layer
from envs.sparsity_projection import SparsityProjector
from search.config import SearchConfig
from search.history import read_history
from search.lm import OWL
from search.runner import run_search
from search.starts import UNIFORM

BUDGET = 0.5
EVALUATIONS = 10


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    cache = tmp_path_factory.mktemp("lm-search-cache")
    data_config = LMDataConfig(seq_len=32, vocab_size=300, calibration=0.2, heldout=0.2, max_bytes=120_000)
    config = LMContextConfig(model="tiny-lm", model_kwargs=(("dim", 32), ("depth", 2), ("heads", 2)),
                             data=data_config, cache_dir=str(cache),
                             train=LMTrainConfig(steps=10, batch_size=8, warmup=2, checkpoint_every=0,
                                                 eval_windows=4),
                             eval=LMEvalConfig(criterion="wanda", calibration_windows=8, heldout_windows=16))
    data = load_lm_data(data_config, cache_dir=cache)
    return build_lm_context(config, data=data, progress=False)


def run_lm_search(config: SearchConfig, ctx):
    """The product's own loop on the prebuilt context (what scripts/search.py runs for --dataset code)."""
    return run_search(config, context=ctx)


def search_config(tmp_path, strategy: str, ctx, **kwargs) -> SearchConfig:
    return SearchConfig(budget=BUDGET, strategy=strategy, evaluations=EVALUATIONS, out=str(tmp_path / strategy),
                        progress=False, export=False, report=False, seed=0, context=ctx.config, **kwargs)


def check_exact(ctx, keep) -> None:
    """The masked model removes exactly what the policy decides, per layer, and the target in all."""
    with ctx.evaluator.sparsified(list(keep)) as model:
        masked = masked_per_layer(model, ctx.layout)
    assert masked == ctx.graph.removed(list(keep))
    assert sum(masked.values()) == round((1 - BUDGET) * ctx.layout.total)


def test_projection_is_exact_and_the_cost_is_the_masked_count(ctx) -> None:
    cost = ctx.cost_model()
    assert isinstance(cost, SparsityCost) and cost.base == ctx.layout.total and len(ctx.graph) == 2
    projector = SparsityProjector(cost, BUDGET, min_keep=0.2, max_keep=1.0)
    rng = torch.Generator().manual_seed(0)
    for _ in range(3):
        keep = projector.project((0.2 + 0.8 * torch.rand(len(ctx.graph), generator=rng)).tolist())
        assert all(0.2 <= k <= 1.0 for k in keep)
        assert cost.cost(keep) == ctx.layout.total - round((1 - BUDGET) * ctx.layout.total)
        assert projector.feasible(keep)
        check_exact(ctx, keep)
    assert projector.project([1.0, 1.0]) == pytest.approx([BUDGET, BUDGET])


def test_random_search_records_exact_policies_beats_uniform_and_resumes(ctx, tmp_path) -> None:
    dense = dense_weights(ctx.model, ctx.layout)
    result = run_lm_search(search_config(tmp_path, "random", ctx), ctx)
    rows = read_history(result.out / "history.csv")
    assert [r.origin for r in rows[:2]] == [UNIFORM, OWL]
    assert len(rows) == 2 + EVALUATIONS and [r.index for r in rows] == list(range(len(rows)))
    for row in rows:
        assert row.cost_ratio == pytest.approx(BUDGET, abs=1e-9)
        check_exact(ctx, row.keep)
    assert len({r.keep for r in rows}) == len(rows)  # OWL and the samples spread the sparsity otherwise
    uniform = rows[0]
    assert all(k == pytest.approx(BUDGET) for k in uniform.keep)
    assert result.uniform_perplexity == pytest.approx(math.exp(uniform.loss))
    assert result.perplexity <= result.uniform_perplexity
    assert result.perplexity == pytest.approx(ctx.evaluator.perplexity(list(result.best.keep)), rel=1e-5)
    # the model is dense again after every evaluation
    for name, weight in dense.items():
        module = ctx.model.get_submodule(name)
        assert not hasattr(module, "weight_mask") and torch.equal(module.weight, weight)
    policy = Policy.load(result.out / "policy.json")
    assert policy.ratios(ctx.graph) == pytest.approx(list(result.best.keep))
    assert policy.resource == "params" and policy.criterion == policy.meta["sparsity_criterion"] == "wanda"
    saved = json.loads((result.out / "config.json").read_text())["context"]
    assert saved["model"] == "tiny-lm" and saved["eval"]["criterion"] == "wanda" and saved["per"] == "block"
    table, units, wrote = result.summary()
    assert result.dense_perplexity == pytest.approx(ctx.evaluator.perplexity([1.0] * len(ctx.graph)))
    assert result.dense_perplexity < result.perplexity
    assert table.row_count == 4 and units.row_count == len(ctx.graph) and "policy.json" in wrote
    # a resume with other language-model settings is refused in one line
    other = dataclasses.replace(ctx.config, eval=dataclasses.replace(ctx.config.eval, criterion="magnitude"))
    with pytest.raises(ConfigError, match=r"context\.eval"):
        run_lm_search(dataclasses.replace(search_config(tmp_path, "random", ctx, resume=True), context=other), ctx)
    # resume: nothing is evaluated again; more evaluations add only the new ones
    again = run_lm_search(search_config(tmp_path, "random", ctx, resume=True), ctx)
    assert read_history(again.out / "history.csv") == rows
    more = run_lm_search(dataclasses.replace(search_config(tmp_path, "random", ctx, resume=True),
                                             evaluations=EVALUATIONS + 2), ctx)
    assert len(read_history(more.out / "history.csv")) == len(rows) + 2


def test_optuna_search_starts_from_the_baselines_and_resumes(ctx, tmp_path) -> None:
    result = run_lm_search(search_config(tmp_path, "optuna", ctx, sampler="tpe"), ctx)
    rows = read_history(result.out / "history.csv")
    assert [r.origin for r in rows[:2]] == [UNIFORM, OWL] and len(rows) == 2 + EVALUATIONS
    for row in rows:
        check_exact(ctx, row.keep)
    assert (result.out / "study.db").is_file()
    assert result.perplexity <= math.exp(rows[0].loss)
    again = run_lm_search(search_config(tmp_path, "optuna", ctx, sampler="tpe", resume=True), ctx)
    assert read_history(again.out / "history.csv") == rows
    assert (again.best.index, again.best.keep) == (result.best.index, result.best.keep)


def test_kl_score_is_zero_for_the_dense_policy(ctx) -> None:
    evaluator = SparsityEvaluator(ctx.model, ctx.graph, ctx.data,
                                  LMEvalConfig(criterion="magnitude", score="kl", calibration_windows=4))
    dense = evaluator.evaluate([1.0] * len(ctx.graph))
    sparse = evaluator.evaluate([BUDGET] * len(ctx.graph))
    assert dense.loss == pytest.approx(0.0, abs=1e-5) and dense.accuracy == pytest.approx(1.0, abs=1e-5)
    assert sparse.loss > max(dense.loss, 0.0) + 1e-6 and sparse.accuracy < dense.accuracy
    assert evaluator.evaluate([BUDGET] * len(ctx.graph)).cached


def test_the_gymnasium_environment_runs_an_episode_on_sparsity_decisions(ctx) -> None:
    from envs.pruning_env import PruningEnv

    env = PruningEnv(ctx.graph, ctx.cost_model(), ctx.evaluator, budget=BUDGET, min_keep=0.2,
                     granularity="weight")
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    done, actions = False, iter([1.0, 1.0])  # dense asked everywhere: AMC's clipping leaves the budget reachable
    while not done:
        obs, reward, done, _, info = env.step(torch.tensor([next(actions)]).numpy())
    assert info["cost"] <= ctx.layout.total - round((1 - BUDGET) * ctx.layout.total) + 1
    assert list(info["keep"]) == pytest.approx([0.8, 0.2], abs=1e-3)  # two equal blocks, the second at min_keep
    assert reward == pytest.approx(info["eval"].accuracy) and 0 < reward < 1


def test_a_worker_context_from_shipped_weights_scores_the_same(ctx) -> None:
    state = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    worker = build_lm_context(ctx.config, data=ctx.data, state_dict=state, progress=False)
    assert worker.graph == ctx.graph and worker.base is None
    keep = [0.7, 0.3]
    assert worker.evaluator.evaluate(keep).loss == pytest.approx(ctx.evaluator.evaluate(keep).loss, rel=1e-6)
