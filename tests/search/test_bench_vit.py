"""The ViT benchmark's machinery on vit/digits: Torch-Pruning's ViT baseline, cells, resume and table."""

from __future__ import annotations

import pytest
import torch

from amc.context import ContextConfig, build_context
from amc.models import build_model
from amc.train import TrainConfig
from search.bench.headline import flops
from search.bench.vit import ROWS, VitSettings, plan, tp_vit_heads, vit_bench, vit_markdown, widths

pytestmark = pytest.mark.xdist_group("bench-vit")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    config = ContextConfig(model="vit", dataset="digits", cache_dir=str(tmp_path_factory.mktemp("vit-cache")),
                           train=TrainConfig(epochs=1))
    return build_context(config, progress=False)


@pytest.mark.parametrize("budget", [0.3])
def test_torch_pruning_vit_prunes_whole_heads_to_the_flops_budget(budget):
    torch.manual_seed(0)
    model = build_model("vit", in_channels=1, num_classes=10).eval()
    example = torch.randn(2, 1, 28, 28)
    pruned, ratio, r, pruned_models = tp_vit_heads(model, example, budget, min_keep=0.2, iterations=8)
    shape = tuple(example.shape[1:])
    assert ratio == pytest.approx(flops(pruned, shape) / flops(model, shape))
    assert budget - 0.05 < ratio <= budget  # bisected until it just fits
    assert 0 < r <= 0.8 and pruned_models >= 2
    base, kept = widths(model), widths(pruned)
    assert base == (64, 4, 128, 4, 128, 4, 128, 4, 128)
    assert all(k < b for k, b in zip(kept, base))  # one ratio for every layer: channels and heads
    assert all(k >= 0.2 * b for k, b in zip(kept, base))
    for block in pruned.blocks:  # whole heads: the head width is kept
        assert block.attn.qkv.out_features == 3 * 16 * block.attn.num_heads
    assert pruned(example).shape == model(example).shape
    assert widths(model) == base  # the base model is untouched


def test_torch_pruning_vit_refuses_an_unreachable_budget():
    model = build_model("vit", in_channels=1, num_classes=10).eval()
    with pytest.raises(ValueError, match="budget 0.01.*use a larger budget"):
        tp_vit_heads(model, torch.randn(2, 1, 28, 28), 0.01, min_keep=0.5, iterations=3)


def test_cells_are_written_resumed_and_tabled(ctx, tmp_path, monkeypatch):
    monkeypatch.setattr("search.outputs._write_reports", lambda *args, **kwargs: None)  # report.png/html: seconds
    assert plan(VitSettings(seeds=(0, 1))) == [("optuna", 0), ("uniform", 0), ("tp-vit", 0), ("optuna", 1)]
    settings = VitSettings(budget=0.5, seeds=(0,), evaluations=3, finetune_epochs=1, finetune_samples=64,
                           tp_iterations=8)
    seen = []
    cells = vit_bench(tmp_path, settings, context=ctx, progress=False, on_cell=lambda c, cached: seen.append(cached))
    assert seen == [False] * 3
    assert [(c.row, c.seed) for c in cells] == plan(settings)
    for cell in cells:
        assert cell.flops_ratio <= 0.5 + 1e-9
        assert 0 <= cell.test_accuracy <= 1 and 0 <= cell.finetuned_test_accuracy <= 1
        assert len(cell.widths) == 1 + 2 * 4
        assert (tmp_path / "budget0.5" / cell.row / f"seed{cell.seed}" / "cell.json").exists()
    tp = next(c for c in cells if c.row == "tp-vit")
    assert tp.flops_ratio > 0.45  # Torch-Pruning's ratio is bisected to the budget
    assert next(c for c in cells if c.row == "optuna").evaluations == 3
    # A rerun reads every cell back, unchanged.
    again = vit_bench(tmp_path, settings, context=ctx, progress=False, on_cell=lambda c, cached: seen.append(cached))
    assert seen[3:] == [True] * 3 and again == cells
    text = vit_markdown(cells, settings, command="bench.py vit", machine="m", base_epochs=1, base_test=0.5,
                        base_widths=widths(ctx.model), base_seconds=None)
    assert text.count("\n| ") == 1 + len(ROWS)
    assert "| optuna (1 run) |" in text and "| uniform (1 run) |" in text and "| tp-vit (1 run) |" in text
