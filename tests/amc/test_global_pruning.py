"""Torch-Pruning's global pruning as keep ratios (amc.pruning.global_pruning): budget, widths, min_keep, refusals."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from amc.cost.analytic import make_cost_model
from amc.graph.discover import discover
from amc.graph.probe import attention_parts
from amc.models import build_model
from amc.pruning.global_pruning import global_pruning
from amc.pruning.pruner import prune_model


def _widths(model: nn.Module) -> list[int]:
    """Output units of every Conv/Linear layer, then the heads of each attention module."""
    out = [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for m in model.modules()
           if isinstance(m, (nn.Conv2d, nn.Linear))]
    return out + [a.num_heads for a in map(attention_parts, model.modules()) if a is not None]


def _tiny_vit() -> tuple[nn.Module, torch.Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("vit", in_channels=1, num_classes=10, dim=32, depth=2, num_heads=4).eval()
        return model, torch.randn(2, 1, 8, 8)


# Random-weight models, seeded: the properties must hold whatever weights training would have produced.
CASES = [("cnn", 0, 1, "flops"), ("cnn", 1, 4, "flops"), ("cnn", 2, 1, "params"), ("resnet20", 0, 4, "flops")]


@pytest.mark.parametrize(("name", "seed", "round_to", "resource"), CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_keep_ratios_are_torch_prunings_widths_within_the_budget(small_model, name, seed, round_to, resource):
    model, example = small_model(name, seed=seed)
    graph = discover(model, example[:1], round_to=round_to)
    cost = make_cost_model(resource, graph)
    before = _widths(model)
    result = global_pruning(model, graph, example, budget=0.4, ratio_of=cost.ratio, min_keep=0.2)
    assert result is not None and result.recipe == "channels" and result.steps >= 1
    assert result.ratio == pytest.approx(cost.ratio(list(result.keep)))
    assert 0.3 < result.ratio <= 0.4  # stepped until it just fits
    # The keep ratios give exactly the units Torch-Pruning kept, under the graph's rounding rule ...
    assert graph.channels(result.keep) == result.units
    assert result.units == tuple(result.model.get_submodule(s.name).out_channels if s.kind != "linear" else
                                 result.model.get_submodule(s.name).out_features for s in graph.layers)
    # ... and our pruner, given them, builds a model of Torch-Pruning's shapes.
    assert _widths(prune_model(model, graph, list(result.keep))) == _widths(result.model)
    assert _widths(result.model) != before and _widths(model) == before  # the base model is untouched
    for spec, kept in zip(graph.layers, result.units):  # min_keep, after Torch-Pruning's rounding
        assert kept >= 0.2 * spec.out_channels and (kept == spec.out_channels or kept % round_to == 0)
    assert result.model(example).shape == model(example).shape


def test_a_tiny_vit_prunes_whole_heads_to_the_budget():
    model, example = _tiny_vit()
    graph = discover(model, example[:1])
    cost = make_cost_model("flops", graph)
    result = global_pruning(model, graph, example, budget=0.5, ratio_of=cost.ratio, min_keep=0.25, iterations=8)
    assert result is not None and result.recipe == "heads" and 0 < result.pruning_ratio <= 0.75
    assert 0.4 < result.ratio <= 0.5
    heads = [i for i, s in enumerate(graph.layers) if s.pattern == "head"]
    assert [result.units[i] for i in heads] == [b.attn.num_heads for b in result.model.blocks]
    assert all(result.units[i] < 4 for i in heads)  # whole heads went ...
    for block in result.model.blocks:  # ... each keeping its width
        assert block.attn.qkv.out_features == 3 * 8 * block.attn.num_heads
    assert graph.channels(result.keep) == result.units and min(result.keep) >= 0.25
    assert _widths(prune_model(model, graph, list(result.keep))) == _widths(result.model)
    assert result.model(example).shape == model(example).shape


def test_an_unreachable_budget_is_none_and_a_warning(small_model, caplog):
    model, example = small_model("cnn")
    graph = discover(model, example[:1])
    with caplog.at_level(logging.WARNING, logger="amc.pruning.global_pruning"):
        result = global_pruning(model, graph, example, budget=0.01, ratio_of=make_cost_model("flops", graph).ratio,
                                min_keep=0.5, steps=20)
    assert result is None
    assert "cannot reach budget 0.01" in caplog.text and "min_keep 0.5" in caplog.text


def test_widths_the_graph_cannot_express_are_none_and_a_warning(caplog):
    # round_to 8 leaves the graph no way to cut 4 heads; Torch-Pruning cuts whole heads all the same.
    model, example = _tiny_vit()
    graph = discover(model, example[:1], round_to=8)
    with caplog.at_level(logging.WARNING, logger="amc.pruning.global_pruning"):
        result = global_pruning(model, graph, example, budget=0.5, ratio_of=make_cost_model("flops", graph).ratio,
                                iterations=4)
    assert result is None and "round_to 8" in caplog.text


def test_a_model_torch_pruning_fails_on_is_none_and_a_warning(small_model, caplog):
    model, example = small_model("cnn")
    graph = discover(model, example[:1])
    with caplog.at_level(logging.WARNING, logger="amc.pruning.global_pruning"):
        result = global_pruning(model, graph, torch.zeros(1, 3, 5, 5), budget=0.5,  # an input it cannot trace
                                ratio_of=make_cost_model("flops", graph).ratio)
    assert result is None and "Torch-Pruning failed with RuntimeError" in caplog.text


def test_a_budget_the_base_model_meets_keeps_every_unit(small_model):
    model, example = small_model("cnn")
    graph = discover(model, example[:1])
    result = global_pruning(model, graph, example, budget=1.0, ratio_of=make_cost_model("flops", graph).ratio)
    assert result.keep == (1.0,) * len(graph) and result.steps == 0 and _widths(result.model) == _widths(model)


def test_torch_pruning_past_its_time_budget_is_none_and_a_warning(caplog):
    """A tiny Llama's grouped-query heads keep Torch-Pruning's dependency walk busy for many minutes: the
    baseline stops at its time budget instead of hanging the search."""
    pytest.importorskip("transformers")
    import time

    from tests.amc.hf_models import hf_llama, text_input

    model, example = hf_llama(), text_input(batch=2)
    graph = discover(model, example[:1])
    cost = make_cost_model("flops", graph)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="amc.pruning.global_pruning"):
        result = global_pruning(model, graph, example, budget=0.5, ratio_of=cost.ratio, seconds=2.0)
    assert result is None
    assert time.monotonic() - started < 60
    assert "did not finish within its time budget" in caplog.text
