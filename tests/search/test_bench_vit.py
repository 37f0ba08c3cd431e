"""The ViT benchmark's machinery on vit/digits: Torch-Pruning's ViT baseline, cells, resume and table."""

from __future__ import annotations

import pytest

from amc.context import ContextConfig, build_context
from amc.errors import ConfigError
from amc.train import TrainConfig
from search.bench.headline import flops, tp_pruned
from search.bench.vit import ROWS, VitSettings, plan, vit_bench, vit_markdown, widths

pytestmark = pytest.mark.xdist_group("bench-vit")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    config = ContextConfig(model="vit", dataset="digits", cache_dir=str(tmp_path_factory.mktemp("vit-cache")),
                           train=TrainConfig(epochs=1))
    return build_context(config, progress=False)


def test_torch_prunings_vit_row_prunes_whole_heads_to_the_flops_budget(ctx):
    result = tp_pruned(ctx, 0.3, min_keep=0.2, iterations=8)
    pruned, shape = result.model, ctx.graph.input_shape
    assert result.ratio == pytest.approx(flops(pruned, shape) / flops(ctx.model, shape))
    assert 0.25 < result.ratio <= 0.3  # bisected until it just fits
    assert 0 < result.pruning_ratio <= 0.8 and result.steps == 8
    base, kept = widths(ctx.model), widths(pruned)
    assert base == (64, 4, 128, 4, 128, 4, 128, 4, 128)
    assert all(k < b for k, b in zip(kept, base))  # one ratio for every layer: channels and heads
    assert all(k >= 0.2 * b for k, b in zip(kept, base))
    for block in pruned.blocks:  # whole heads: the head width is kept
        assert block.attn.qkv.out_features == 3 * 16 * block.attn.num_heads
    example = ctx.example(2)
    assert pruned(example).shape == ctx.model(example).shape
    assert widths(ctx.model) == base  # the base model is untouched


def test_torch_prunings_vit_row_refuses_an_unreachable_budget(ctx):
    with pytest.raises(ConfigError, match="budget 0.01: it gives no pruned model"):
        tp_pruned(ctx, 0.01, min_keep=0.5, iterations=3)


def test_every_row_is_fine_tuned_with_every_seed():
    rows = [row for row, *_ in ROWS]
    assert rows == ["optuna", "default", "uniform", "tp-vit"]
    assert plan(VitSettings(seeds=(0, 1))) == [(row, seed) for seed in (0, 1) for row in rows]
    assert plan(VitSettings(seeds=(0, 1), finetune_every_seed=False)) == [(row, 0) for row in rows] + [
        ("optuna", 1), ("default", 1)]


def test_cells_are_written_resumed_and_tabled(ctx, tmp_path, monkeypatch):
    monkeypatch.setattr("search.outputs._write_reports", lambda *args, **kwargs: None)  # report.png/html: seconds
    settings = VitSettings(budget=0.5, seeds=(0,), evaluations=3, finetune_epochs=1, finetune_samples=64,
                           tp_iterations=8, default_evaluations=3, select="finetune:1", select_top_k=1,
                           select_samples=64)
    seen = []
    cells = vit_bench(tmp_path, settings, context=ctx, progress=False, on_cell=lambda c, cached: seen.append(cached))
    assert seen == [False] * 4
    assert [(c.row, c.seed) for c in cells] == plan(settings)
    for cell in cells:
        assert cell.flops_ratio <= 0.5 + 1e-9
        assert 0 <= cell.test_accuracy <= 1 and 0 <= cell.finetuned_test_accuracy <= 1
        assert len(cell.widths) == 1 + 2 * 4
        assert (tmp_path / "budget0.5" / cell.row / f"seed{cell.seed}" / "cell.json").exists()
    tp = next(c for c in cells if c.row == "tp-vit")
    assert tp.flops_ratio > 0.45  # Torch-Pruning's ratio is bisected to the budget
    by_row = {c.row: c for c in cells}
    assert by_row["optuna"].evaluations == 3 + 2  # the baselines (uniform, Torch-Pruning's heads) first
    assert by_row["default"].evaluations == 3 + 2 and by_row["default"].chosen  # its policy's origin
    assert (tmp_path / "budget0.5" / "default" / "seed0" / "search" / "policy.json").exists()
    # A rerun reads every cell back, unchanged.
    again = vit_bench(tmp_path, settings, context=ctx, progress=False, on_cell=lambda c, cached: seen.append(cached))
    assert seen[4:] == [True] * 4 and again == cells
    text = vit_markdown(cells, settings, command="bench.py vit", machine="m", base_epochs=1, base_test=0.5,
                        base_widths=widths(ctx.model), base_seconds=None)
    assert text.count("\n| ") == 1 + len(ROWS)
    assert "| optuna (1 run) |" in text and "| uniform (1 run) |" in text and "| tp-vit (1 run) |" in text
    assert "| default (1 run) |" in text and "deploy rung `finetune:1` on the top 1" in text
    assert "- vs the better baseline (" in text and "target >= +0.3: **" in text  # the ViT's verdict
