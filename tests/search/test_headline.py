"""The headline benchmark's machinery on cnn/digits: Torch-Pruning baseline, cells, resume, table and verdicts."""

from __future__ import annotations

import dataclasses
import json

import pytest
from torch import nn

from amc.context import ContextConfig, build_context
from amc.pruning.policy import Policy
from search.bench.headline import (
    ROWS,
    HeadlineCell,
    HeadlineSettings,
    deployed_accuracy,
    deployed_verdicts,
    finetune_set,
    flops,
    headline,
    headline_context,
    headline_markdown,
    plan,
    tp_global_magnitude,
    verdicts,
)
from search.bench.searched import default_row_text, search_config
from search.bench.verdicts import default_verdicts
from search.config import SearchConfig
from search.options import SearchOptions

pytestmark = pytest.mark.usefixtures("cache_env")


@pytest.fixture(scope="module")
def ctx(amc_cache):
    return build_context(ContextConfig(cache_dir=str(amc_cache)), progress=False)


def _convs(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


# Random-weight models, seeded: the property must hold whatever weights training would have produced.
TP_MODELS = [("cnn", seed) for seed in range(5)] + [("resnet20", seed) for seed in range(2)]


@pytest.mark.parametrize("budget", [0.3, 0.5])
@pytest.mark.parametrize(("name", "seed"), TP_MODELS, ids=[f"{n}-seed{s}" for n, s in TP_MODELS])
def test_torch_pruning_global_meets_the_flops_budget(small_model, name, seed, budget):
    model, example = small_model(name, seed=seed)
    pruned, ratio, steps = tp_global_magnitude(model, example, budget, round_to=4, min_keep=0.2)
    shape = tuple(example.shape[1:])
    assert ratio == pytest.approx(flops(pruned, shape) / flops(model, shape))
    assert budget - 0.1 < ratio <= budget  # stepped until it just fits, not far below
    assert steps >= 1
    base = _convs(model)
    for kept, full in zip(_convs(pruned), base):
        assert kept >= 0.2 * full - 1e-9  # min_keep holds after Torch-Pruning's rounding
        assert kept == full or kept % 4 == 0  # round_to
    assert _convs(pruned) != base
    assert pruned(example).shape == model(example).shape
    # The base model is untouched.
    assert _convs(model) == base


def test_torch_pruning_global_refuses_an_unreachable_budget(ctx):
    with pytest.raises(ValueError, match="budget 0.01.*use a larger budget"):
        tp_global_magnitude(ctx.model, ctx.data.val.tensors[0][:2], 0.01, round_to=None, min_keep=0.5, steps=20)


def test_plan_runs_deterministic_rows_once():
    cells = plan(HeadlineSettings(budgets=(0.3, 0.5), seeds=(0, 1, 2)))
    per_budget = [c for c in cells if c[0] == 0.3]
    assert {row for _, row, _ in per_budget} == {row for row, *_ in ROWS}
    assert [seed for _, row, seed in per_budget if row == "optuna-tpe"] == [0, 1, 2]
    assert [seed for _, row, seed in per_budget if row in ("uniform", "tp-global", "sensitivity", "oracle")] == [0] * 4
    assert [seed for _, row, seed in per_budget if row == "default"] == [0, 1, 2]
    assert len(cells) == 2 * (4 + 4 * 3)


@pytest.mark.slow
def test_headline_cells_are_saved_and_a_rerun_skips_them(ctx, tmp_path):
    settings = HeadlineSettings(budgets=(0.5,), seeds=(0,), evaluations=4, oracle_factor=2, workers=1,
                                round_to=1, finetune_samples=300, latency_repeats=1,
                                latency_run_time=0.02, default_evaluations=4)
    seen = []
    cells = headline(tmp_path, settings, context=ctx, progress=False, on_cell=lambda c, cached: seen.append(cached))
    assert [c.row for c in cells] == [row for row, *_ in ROWS] and seen == [False] * len(ROWS)
    # The cells' searches write their policy and history, not a report each (the benchmark tables them).
    assert list(tmp_path.rglob("policy.json")) and list(tmp_path.rglob("history.csv"))
    assert not list(tmp_path.rglob("report.png")) and not list(tmp_path.rglob("report.html"))
    for cell in cells:
        assert (tmp_path / "budget0.5" / cell.row / "seed0" / "cell.json").exists()
        assert 0 < cell.flops_ratio <= 0.5 + 1e-9, cell
        assert 0.2 <= cell.test_accuracy <= 1 and 0.2 <= cell.finetuned_test_accuracy <= 1
        assert cell.latency_ratio > 0 and cell.search_seconds >= 0
    by_row = {c.row: c for c in cells}
    # The searches evaluate the two baselines first (uniform and tp-global are baselines themselves).
    assert by_row["uniform"].evaluations == 1 and by_row["tp-global"].evaluations == 0
    assert by_row["optuna-tpe"].evaluations == 4 + 2 and by_row["oracle"].evaluations == 8 + 2
    assert by_row["default"].evaluations == 4 + 2 and by_row["default"].chosen
    assert by_row["uniform"].chosen == "baseline:uniform" and by_row["tp-global"].chosen == ""
    # The oracle searched longer with the same sampler: at least as good on the subset it was scored on.
    assert by_row["oracle"].val_accuracy >= max(c.val_accuracy for c in cells if c.row == "optuna-tpe") - 1e-9

    # A rerun reads every cell back; a lost cell is the only one run again.
    (tmp_path / "budget0.5" / "random" / "seed0" / "cell.json").unlink()
    seen.clear()
    again = headline(tmp_path, settings, context=ctx, progress=False, on_cell=lambda c, cached: seen.append(cached))
    assert seen.count(False) == 1 and not seen[[row for row, *_ in ROWS].index("random")]
    kept = {c.row: c for c in again}
    for row in ("uniform", "tp-global", "optuna-tpe", "oracle"):
        assert kept[row] == by_row[row]
    # The random row's search was not repeated: its history is read back, so the policy is the same.
    assert kept["random"].channels == by_row["random"].channels
    assert json.loads((tmp_path / "budget0.5" / "random" / "seed0" / "cell.json").read_text())["row"] == "random"


def _cell(row: str, seed: int, test: float, val: float | None = None) -> HeadlineCell:
    return HeadlineCell(budget=0.3, row=row, seed=seed, val_accuracy=test if val is None else val, test_accuracy=test,
                        finetuned_test_accuracy=0.9, flops_ratio=0.29, latency_ratio=0.5, search_seconds=10.0,
                        evaluations=100, distinct=40, seconds=60.0)


def test_verdicts_compare_the_best_strategy_with_the_targets():
    cells = [_cell("uniform", 0, 0.20), _cell("tp-global", 0, 0.22), _cell("oracle", 0, 0.26),
             _cell("optuna-tpe", 0, 0.25), _cell("optuna-tpe", 1, 0.26), _cell("random", 0, 0.21),
             _cell("random", 1, 0.21)]
    text = "\n".join(verdicts(cells))
    assert "**optuna-tpe** at 25.50%" in text
    assert "vs uniform (20.00%): +5.50 points; target >= +2: **met**" in text
    assert "vs tp-global (22.00%): +3.50 points; target >= +1: **met**" in text
    assert "vs the oracle (26.00%): -0.50 points; target within 0.5: **met**" in text
    worse = [c if c.row != "tp-global" else _cell("tp-global", 0, 0.25) for c in cells]
    assert "+0.50 points; target >= +1: **missed**" in "\n".join(verdicts(worse))
    assert verdicts([_cell("uniform", 0, 0.2)]) == []  # rows missing: no verdict

    settings = HeadlineSettings(budgets=(0.3,), seeds=(0, 1))
    table = headline_markdown(cells, settings, command="python scripts/bench.py headline", machine="test machine",
                              total_seconds=600)
    assert "| 0.3 | optuna-tpe | 90.00 ± 0.00 | 25.50 ± 0.71 | 25.50 ± 0.71 |" in table  # deployed accuracy first
    assert "| 0.3 | uniform (1 run) | 90.00 | 20.00 |" in table
    assert "10.00 (40 of 100)" in table and "10 min of cell time" in table


def _tuned(row: str, seed: int, tuned: float) -> HeadlineCell:
    return dataclasses.replace(_cell(row, seed, 0.3), finetuned_test_accuracy=tuned)


def test_deployed_verdicts_hold_the_best_searched_row_to_the_fine_tuned_targets():
    cells = [_tuned("uniform", 0, 0.910), _tuned("uniform", 1, 0.912), _tuned("tp-global", 0, 0.913),
             _tuned("ddpg", 0, 0.918), _tuned("ddpg", 1, 0.920), _tuned("random", 0, 0.930), _tuned("random", 1, 0.900)]
    text = "\n".join(deployed_verdicts(cells, 0.3))
    assert "mean of 2 seed(s)): best searched row is **ddpg** at 91.90%." in text  # random's mean is 91.50
    assert "vs uniform (91.10%, 2 seed(s)): +0.80 points; target >= +0.5: **met**" in text
    assert "vs tp-global (91.30%, 1 seed(s)): +0.60 points; target >= +0.3: **met**" in text
    close = [c if c.row != "tp-global" else _tuned("tp-global", 0, 0.917) for c in cells]
    assert "+0.20 points; target >= +0.3: **missed**" in "\n".join(deployed_verdicts(close, 0.3))
    assert deployed_verdicts([_tuned("uniform", 0, 0.9)], 0.3) == []


def test_plan_fine_tunes_deterministic_rows_with_every_seed_and_keeps_only_the_rows_asked():
    settings = HeadlineSettings(budgets=(0.3,), seeds=(0, 1, 2), finetune_every_seed=True,
                                rows=("uniform", "tp-global", "ddpg"))
    assert plan(settings) == [(0.3, row, seed) for row in ("uniform", "tp-global", "ddpg") for seed in (0, 1, 2)]


def test_a_deterministic_row_finds_its_policy_once_and_is_fine_tuned_per_seed(ctx, tmp_path):
    settings = HeadlineSettings(budgets=(0.5,), seeds=(0, 1), workers=1, round_to=1, finetune_samples=300,
                                latency_repeats=1, latency_run_time=0.02, rows=("uniform", "tp-global"),
                                finetune_every_seed=True)
    cells = headline(tmp_path, settings, context=ctx, progress=False)
    assert [(c.row, c.seed) for c in cells] == [("uniform", 0), ("uniform", 1), ("tp-global", 0), ("tp-global", 1)]
    assert (tmp_path / "budget0.5" / "uniform" / "seed0" / "search" / "policy.json").exists()
    assert not (tmp_path / "budget0.5" / "uniform" / "seed1" / "search").exists()  # the seed-0 policy is reused
    by = {(c.row, c.seed): c for c in cells}
    for row in ("uniform", "tp-global"):
        assert by[row, 0].channels == by[row, 1].channels and by[row, 0].val_accuracy == by[row, 1].val_accuracy
    # Seed 1's cell is the seed-0 policy fine-tuned with seed 1 (the same recipe, measured again here).
    policy = Policy.load(tmp_path / "budget0.5" / "uniform" / "seed0" / "search" / "policy.json")
    tuned = deployed_accuracy(ctx, ctx.evaluator.prune(policy), finetune_set(ctx, 300), epochs=1, lr=0.01, seed=1)
    assert by["uniform", 1].finetuned_test_accuracy == tuned


def test_the_plan_of_the_rerun_fine_tunes_every_row_with_every_seed():
    settings = HeadlineSettings(budgets=(0.3, 0.5), seeds=(0, 1, 2), finetune_every_seed=True,
                                rows=("uniform", "tp-global", "default"))
    assert plan(settings) == [(b, row, seed) for b in (0.3, 0.5) for row in ("uniform", "tp-global", "default")
                              for seed in (0, 1, 2)]


def test_the_default_row_runs_the_product_defaults_with_the_settings_overrides(ctx, tmp_path):
    config = search_config(HeadlineSettings(), ctx, budget=0.3, strategy="default", seed=2, evaluations=100,
                           out=tmp_path / "run")
    defaults = SearchOptions().to_config()  # what scripts/search.py runs with no options
    assert (config.strategy, config.sampler, config.evaluations) == (defaults.strategy, defaults.sampler,
                                                                     defaults.evaluations)
    assert (config.budget, config.seed, config.context) == (0.3, 2, ctx.config)
    assert (config.select, config.select_top_k, config.baselines) == (defaults.select, defaults.select_top_k,
                                                                      defaults.baselines)
    settings = HeadlineSettings(select="finetune:2", select_top_k=3, select_samples=500, select_lr=0.02,
                                baselines=False, default_evaluations=40)
    config = search_config(settings, ctx, budget=0.5, strategy="default", seed=0, evaluations=100, out=tmp_path)
    assert (config.select, config.select_top_k, config.select_samples, config.select_lr) == ("finetune:2", 3, 500, 0.02)
    assert config.baselines is False and config.evaluations == 40 and config.resume  # the folder is there
    text = default_row_text(settings)
    assert "40 evaluations, no baselines, deploy rung `finetune:2` on the top 3" in text
    # Another row keeps its strategy and the headline's evaluations.
    other = search_config(settings, ctx, budget=0.5, strategy="random", seed=0, evaluations=100, out=tmp_path / "r")
    assert (other.strategy, other.evaluations, other.select) == ("random", 100, SearchConfig().select)


def _deployed(row: str, seed: int, tuned: float, budget: float = 0.5, chosen: str = "") -> HeadlineCell:
    return dataclasses.replace(_cell(row, seed, 0.3), budget=budget, finetuned_test_accuracy=tuned, chosen=chosen)


def test_default_verdicts_hold_the_default_row_to_the_better_baseline():
    cells = [_deployed("uniform", s, 0.920 + s / 1000) for s in range(3)] \
        + [_deployed("tp-global", s, 0.923) for s in range(3)] \
        + [_deployed("default", 0, 0.9275, chosen="search"), _deployed("default", 1, 0.9265, chosen="search"),
           _deployed("default", 2, 0.923, chosen="baseline:tp-global")]
    text = "\n".join(default_verdicts(cells, 0.5))
    assert "**default** 92.57 ± 0.24 (3 seed(s)); uniform 92.10 ± 0.10 (3), tp-global 92.30 ± 0.00 (3)." in text
    assert "- vs the better baseline (tp-global, 92.30%): +0.27 points; target >= -0.1: **met**" in text
    assert "target >= +0.3: **missed**" in text
    assert "came from: search (2 of 3), baseline:tp-global (1 of 3)" in text
    at_03 = [dataclasses.replace(c, budget=0.3) for c in cells]
    assert "target >= +0.3" not in "\n".join(default_verdicts(at_03, 0.3))  # the gain is asked at 0.5 only
    worse = [c if c.row != "default" else dataclasses.replace(c, finetuned_test_accuracy=0.92) for c in cells]
    assert "-0.30 points; target >= -0.1: **missed**" in "\n".join(default_verdicts(worse, 0.5))
    assert default_verdicts([c for c in cells if c.row != "tp-global"], 0.5) == []  # a baseline missing


def test_headline_context_sets_the_search_score_and_keeps_the_base_model():
    from search.bench.common import fashion_resnet20

    config = headline_context(HeadlineSettings(score="reconstruct"))
    assert config.eval.score == "reconstruct"
    assert dataclasses.replace(config, eval=fashion_resnet20().eval) == fashion_resnet20()


def test_flops_counts_a_convolution():
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False))
    assert flops(conv, (1, 8, 8)) == 2 * 4 * 9 * 64  # FlopCounterMode counts a multiply-add as 2
    conv.eval()
    flops(conv, (1, 8, 8))
    assert not conv.training  # the module's mode is restored
    conv.train()
    flops(conv, (1, 8, 8))
    assert conv.training
