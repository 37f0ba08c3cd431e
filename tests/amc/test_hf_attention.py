"""Hugging Face attention (separate q/k/v, grouped-query attention), their exact costs, pruning and export.

Tiny random-init models built from configs (tests/amc/hf_models.py; no download). Oracle as in test_cost.py:
the analytic FLOPs and parameters of 20 random policies equal what FlopCounterMode (with
``F.scaled_dot_product_attention`` on CPU counted: :func:`amc.graph.probe.counting_flops`) and the parameter
count measure on the pruned model.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from amc.cost.analytic import FlopsCost, ParamsCost
from amc.errors import UnsupportedModelError
from amc.graph.caches import release_caches
from amc.graph.discover import discover
from amc.graph.probe import counting_flops
from amc.pruning.pruner import prune_model
from tests.export_checks import assert_exports

pytest.importorskip("transformers")

from tests.amc import hf_models as hm  # noqa: E402

IMAGE = (3, 8, 8)
BUILDERS = {"vit": hm.hf_vit, "bert": hm.hf_bert, "llama": hm.hf_llama, "resnet": hm.hf_resnet,
            "convnext": hm.hf_convnext}


def example(name: str, batch: int = 1) -> torch.Tensor:
    if name in ("bert", "llama"):
        return hm.text_input(batch)
    return torch.randn(batch, *IMAGE, generator=torch.Generator().manual_seed(batch))


def measured(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    with counting_flops() as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops(), sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "attn"), [("vit", "eager"), ("bert", "eager"), ("llama", "eager"),
                                            ("llama", "sdpa"), ("resnet", "eager"), ("convnext", "eager")])
def test_costs_are_exact_and_pruned_models_run(name: str, attn: str) -> None:
    model = BUILDERS[name](attn)
    x = example(name)
    graph = discover(model, x)
    flops, params = FlopsCost(graph), ParamsCost(graph)
    assert (flops.base, params.base) == measured(model, x)
    assert not graph.skipped
    rng = random.Random(0)
    for _ in range(20):
        keep = [rng.uniform(0.01, 1.0) for _ in graph.layers]
        pruned = prune_model(model, graph, keep)
        assert (flops.cost(keep), params.cost(keep)) == measured(pruned, x), keep
        with torch.no_grad():
            out = pruned(example(name, 2))
        assert out.shape == (2, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["vit", "bert", "llama"])
def test_heads_are_decisions(name: str) -> None:
    graph = discover(BUILDERS[name](), example(name))
    heads = [s for s in graph.layers if s.pattern == "head"]
    assert len(heads) == 2
    if name == "llama":  # grouped-query attention: 2 key/value heads, each with 2 query heads of 8 channels
        assert (heads[0].out_channels, heads[0].unit) == (2, 16)
    else:
        assert (heads[0].out_channels, heads[0].unit) == (4, 8)
    attention = [r for r in graph.modules if r.type == "attention"]
    assert len(attention) == 2 and all(r.flops_per_channel == 4 * (5 if name == "vit" else 6) ** 2 for r in attention)


def test_grouped_query_attention_loses_whole_groups() -> None:
    model = hm.hf_llama()
    graph = discover(model, hm.text_input())
    keep = [0.5 if s.pattern == "head" else 1.0 for s in graph.layers]
    pruned = prune_model(model, graph, keep)
    for layer in pruned.inner.model.layers:
        attn = layer.self_attn
        assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features,
                attn.o_proj.in_features) == (16, 8, 8, 16)  # one key/value head and its two query heads
    base = model.inner.model.layers[0].self_attn
    kept_kv = [i for i in range(16) if torch.equal(pruned.inner.model.layers[0].self_attn.k_proj.weight[:8],
                                                   base.k_proj.weight[i: i + 8])]
    assert kept_kv in ([0], [8])  # a whole key/value head, not channels from both
    q = pruned.inner.model.layers[0].self_attn.q_proj.weight
    start = 0 if kept_kv == [0] else 16
    assert torch.equal(q, base.q_proj.weight[start: start + 16])  # with the query heads that read it


def test_bert_head_counts_follow_pruning() -> None:
    model = hm.hf_bert()
    graph = discover(model, hm.text_input())
    keep = [0.5 if s.pattern == "head" else 1.0 for s in graph.layers]
    pruned = prune_model(model, graph, keep)
    attention = pruned.inner.bert.encoder.layer[0].attention.self
    assert (attention.num_attention_heads, attention.all_head_size, attention.query.out_features) == (2, 16, 16)


@pytest.mark.parametrize("name", ["vit", "bert", "llama"])
def test_pruned_models_export_with_torch_export_and_onnx(name: str, tmp_path: Path) -> None:
    model = BUILDERS[name]()
    graph = discover(model, example(name))
    keep = np.random.default_rng(1).uniform(0.2, 0.9, len(graph)).tolist()
    assert_exports(prune_model(model, graph, keep), example(name, 2), example(name, 3), tmp_path)


def test_a_plain_conv_model_has_no_flops_of_its_own() -> None:
    """HF's ResNetStage iterates its layers' ModuleList without calling it: the FLOPs stay with the convs."""
    model = hm.hf_resnet()
    graph = discover(model, example("resnet"))
    assert graph.other_flops == 0 and all(r.type != "attention" for r in graph.modules)


def test_discovery_over_its_time_budget_is_refused_in_one_line() -> None:
    with pytest.raises(UnsupportedModelError) as info:
        discover(hm.hf_llama(), hm.text_input(), time_budget_s=1e-4)
    message = str(info.value)
    assert "\n" not in message and "time budget" in message and "Logits" in message


def test_non_leaf_caches_are_released_for_deepcopy() -> None:
    """timm's EfficientFormer/LeViT keep attention biases per device in a dict; traced with gradients they are
    non-leaf, which copy.deepcopy refuses."""
    import copy

    class Cached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.bias_cache: dict[str, torch.Tensor] = {}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if str(x.device) not in self.bias_cache:
                self.bias_cache[str(x.device)] = self.fc.weight.sum(0)
            return self.fc(x) + self.bias_cache[str(x.device)]

    model = Cached().eval()
    model(torch.zeros(1, 4))
    with pytest.raises(RuntimeError, match="graph leaves"):
        copy.deepcopy(model)
    assert release_caches(model) == 1
    assert copy.deepcopy(model).bias_cache == {}


def test_a_decision_whose_pruned_model_breaks_keeps_its_width(caplog) -> None:
    """HF Swin's relative position bias is per head and Torch-Pruning does not cut it: its heads stay."""
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(0)
    config = SwinConfig(image_size=16, patch_size=2, embed_dim=8, depths=[1], num_heads=[2], window_size=4,
                        num_labels=5)
    model = hm.Logits(SwinForImageClassification(config)).eval()
    x = torch.randn(1, 3, 16, 16)
    with caplog.at_level(logging.WARNING, logger="amc.graph.discover"):
        graph = discover(model, x)
    assert graph.skipped and "keep their width" in caplog.text
    flops, params = FlopsCost(graph), ParamsCost(graph)
    rng = random.Random(0)
    for _ in range(3):
        keep = [rng.uniform(0.1, 1.0) for _ in graph.layers]
        assert (flops.cost(keep), params.cost(keep)) == measured(prune_model(model, graph, keep), x)


@pytest.mark.parametrize("name", ["vit", "llama"])
def test_latency_tables_time_attention_norm_embedding_and_parameter_records(name: str, tmp_path: Path) -> None:
    from amc.cost.latency import LatencyConfig, build_latency_cost
    from amc.cost.lookup import standalone_module, table_entries

    model = BUILDERS[name]()
    graph = discover(model, example(name))
    kinds = {r.type for r in graph.modules}
    assert {"attention", "param"} <= kinds and ({"norm"} if name == "vit" else {"embed"}) <= kinds
    entries, _ = table_entries(model, graph, 3)
    for entry, rec in zip(entries, graph.modules):  # every grid point builds a module that runs
        for out in entry.out_grid:
            for inp in entry.in_grid:
                module, shape = standalone_module(entry.config, out, inp)
                with torch.no_grad():
                    assert torch.isfinite(module(torch.rand(2, *shape))).all(), (rec.name, out, inp)
    config = LatencyConfig(threads=1, grid=2, min_run_time=0.001, model_run_time=0.002, calibration_keeps=(0.5,),
                           calibration_random=0, passes=1, calibration_rounds=1, cache_dir=str(tmp_path))
    cost = build_latency_cost(model, graph, config, progress=False)
    assert cost.base > 0 and cost.cost([0.5] * len(graph)) > 0
