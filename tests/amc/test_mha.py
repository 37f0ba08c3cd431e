"""``nn.MultiheadAttention`` on the channel stream (torchvision's ViT layout): pruned exactly, with its fast path
counted (:func:`amc.graph.probe.counting_flops`), and exported."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from amc.cost.analytic import FlopsCost, ParamsCost
from amc.graph.discover import discover
from amc.graph.probe import counting_flops
from amc.pruning.export import export_onnx, export_program
from amc.pruning.pruner import prune_model
from search.bench.models_survey import mha_vit

SHAPE = (3, 32, 32)


def build() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return mha_vit().eval()


def measured(model: nn.Module) -> tuple[int, int]:
    with counting_flops() as counter, torch.no_grad():
        model(torch.zeros(1, *SHAPE))
    return counter.get_total_flops(), sum(p.numel() for p in model.parameters())


def test_the_stream_through_multihead_attention_is_one_decision_pruned_exactly() -> None:
    model = build()
    graph = discover(model, torch.zeros(1, *SHAPE))
    stream = graph[0]
    assert not graph.skipped and (stream.name, stream.pattern, stream.unit) == ("conv_proj", "group", 4)
    assert {"blocks.0.self_attention", "blocks.1.self_attention", "ln"} <= set(stream.members)
    flops, params = FlopsCost(graph), ParamsCost(graph)
    assert (flops.base, params.base) == measured(model)
    rng = random.Random(0)
    for _ in range(20):
        keep = [rng.uniform(0.01, 1.0) for _ in graph.layers]
        pruned = prune_model(model, graph, keep)
        assert (flops.cost(keep), params.cost(keep)) == measured(pruned), keep
        mha = pruned.blocks[0].self_attention
        assert mha.embed_dim == graph.channels(keep)[0] * 4 and mha.head_dim * 4 == mha.embed_dim
    weight = FlopsCost(graph, granularity="weight")  # its projections are not sparsified: counted whole
    keep = [0.5] * len(graph)
    sparse = prune_model(model, graph, keep, granularity="weight")
    dense_mha = sum(r.base_flops for r in graph.modules if r.type == "mha")
    linear = sum(2 * r.positions * int((sparse.get_submodule(r.name).weight != 0).sum())
                 for r in graph.modules if r.type in ("conv", "linear"))
    assert weight.cost(keep) == dense_mha + linear


def test_pruned_multihead_attention_exports(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = build()
    graph = discover(model, torch.zeros(1, *SHAPE))
    pruned = prune_model(model, graph, np.random.default_rng(1).uniform(0.2, 0.9, len(graph)).tolist())
    batch = torch.randn(3, *SHAPE)
    with torch.no_grad():
        want = pruned(batch)
        program = export_program(pruned, torch.randn(2, *SHAPE)).module()
        torch.testing.assert_close(program(batch), want, atol=1e-5, rtol=1e-4)
    path = export_onnx(pruned, torch.randn(2, *SHAPE), tmp_path / "m.onnx")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": batch.numpy()})[0]
    assert np.abs(got - want.numpy()).max() < 1e-4
