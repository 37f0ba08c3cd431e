"""Modern architectures (issue 21): attention, LayerNorm, GroupNorm, bare parameters, grouped convs,
channel shuffle.

Oracle tests as in test_cost.py: for each family, the analytic FLOPs and parameters of 20 random
policies equal what FlopCounterMode and the parameter count measure on the pruned model; every pruned
model runs forward and exports with torch.export and ONNX (onnxruntime agrees). No torchvision.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from amc.cost.analytic import FlopsCost, ParamsCost
from amc.errors import UnsupportedModelError
from amc.pruning.export import export_onnx, export_program
from amc.graph.discover import discover
from amc.graph.probe import counting_flops
from amc.models import build_model
from amc.pruning.pruner import prune_model
from tests import forkserver
from tests.amc import modern_models as mm

N_POLICIES = 20
SHAPE = (3, 8, 8)

FAMILIES = {
    "vit": mm.vit_small,
    "window_attention": mm.WindowAttentionNet,
    "convnext": mm.ConvNeXtNet,
    "resnext": mm.ResNeXtNet,
}


def build(name: str) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return FAMILIES[name]().eval()


def measured(model: nn.Module, shape: tuple[int, ...] = SHAPE) -> tuple[int, int]:
    # FlopCounterMode with the CPU attention kernels counted (plain FlopCounterMode counts 0 for them on the CPU)
    with counting_flops() as counter:
        model(torch.zeros(1, *shape))
    return counter.get_total_flops(), sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_costs_are_exact_and_pruned_models_run(name: str) -> None:
    model = build(name)
    x = torch.randn(2, *SHAPE)
    graph = discover(model, x[:1])
    flops, params = FlopsCost(graph), ParamsCost(graph)
    assert (flops.base, params.base) == measured(model)
    rng = random.Random(0)
    for _ in range(N_POLICIES):
        keep = [rng.uniform(0.01, 1.0) for _ in graph.layers]
        pruned = prune_model(model, graph, keep)
        assert (flops.cost(keep), params.cost(keep)) == measured(pruned), keep
        with torch.no_grad():
            out = pruned(x)
        assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_vit_decisions_are_heads_and_mlp_widths_per_block() -> None:
    model = build("vit")
    graph = discover(model, torch.zeros(1, *SHAPE))
    assert graph.names == ("patch_embed", "blocks.0.attn", "blocks.0.mlp.fc1", "blocks.1.attn", "blocks.1.mlp.fc1")
    stream, heads = graph[0], graph[1]
    assert set(stream.parameters) == {"cls_token", "pos_embed"}  # the embedding width cuts both
    assert {"blocks.0.norm1", "blocks.1.norm2", "norm"} <= set(stream.members)
    assert (heads.pattern, heads.out_channels, heads.unit) == ("head", 4, 8)
    attn = next(r for r in graph.modules if r.name == "blocks.0.attn")
    assert attn.type == "attention" and attn.out_deps == ((1, 8),)
    assert attn.base_flops == 4 * 5 * 5 * 32  # q @ k^T and attn @ v over 5 tokens, as aten.bmm counts them
    pruned = prune_model(model, graph, [1.0, 0.5, 1.0, 0.25, 1.0])
    assert [b.attn.num_heads for b in pruned.blocks] == [2, 1]
    assert pruned.blocks[0].attn.qkv.out_features == 3 * 2 * 8 and pruned.blocks[1].attn.proj.in_features == 8


def test_whole_heads_go_with_their_q_k_and_v_rows() -> None:
    model = build("vit")
    graph = discover(model, torch.zeros(1, *SHAPE))
    with torch.no_grad():  # head 2 of block 0 is by far the weakest: l1 removes it first
        qkv = model.blocks[0].attn.qkv.weight.clone()
        model.blocks[0].attn.qkv.weight[:] = 1.0
        for part in range(3):
            model.blocks[0].attn.qkv.weight[part * 32 + 16: part * 32 + 24] = 1e-3
    try:
        pruned = prune_model(model, graph, [1.0, 0.75, 1.0, 1.0, 1.0])
    finally:
        with torch.no_grad():
            model.blocks[0].attn.qkv.weight[:] = qkv
    weight = pruned.blocks[0].attn.qkv.weight  # (3 * 3 heads * 8, 32)
    assert weight.shape == (72, 32) and bool((weight.abs() > 0.5).all())


def test_grouped_convs_keep_equal_group_widths() -> None:
    model = build("resnext")
    graph = discover(model, torch.zeros(1, *SHAPE))
    by_name = {s.name: s for s in graph.layers}
    assert by_name["conv1"].pattern == by_name["conv2"].pattern == "group"
    assert (by_name["conv1"].out_channels, by_name["conv1"].unit) == (8, 4)  # 8 channels in each of 4 groups
    assert "gn2" in by_name["conv2"].members
    pruned = prune_model(model, graph, [1.0, 0.5, 0.25])
    assert pruned.conv2.in_channels == 16 and pruned.conv2.out_channels == 8 and pruned.conv2.groups == 4
    assert pruned.gn2.num_channels == 8 and pruned.gn2.num_groups == 4


def test_grouped_pruning_removes_the_same_channels_in_every_group() -> None:
    model = build("resnext")
    graph = discover(model, torch.zeros(1, *SHAPE))
    with torch.no_grad():
        conv1 = model.conv1.weight.clone()
        model.conv1.weight[:] = 1.0
        model.conv1.weight[[1, 9, 17, 25]] = 1e-4  # channel 1 of each group of conv2's inputs
    try:
        pruned = prune_model(model, graph, [1.0, 7 / 8, 1.0])
    finally:
        with torch.no_grad():
            model.conv1.weight[:] = conv1
    assert pruned.conv1.out_channels == 28 and bool((pruned.conv1.weight.abs() > 0.5).all())
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():  # conv2 kept the weights of the kept inputs, group by group
        kept = [i for i in range(8) if i != 1]
        torch.testing.assert_close(pruned.conv2.weight, model.conv2.weight[:, kept])
        assert pruned(x).shape == (2, 5)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_pruned_models_export_with_torch_export_and_onnx(name: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    model = build(name)
    graph = discover(model, torch.zeros(1, *SHAPE))
    keep = np.random.default_rng(1).uniform(0.2, 0.9, len(graph)).tolist()
    pruned = prune_model(model, graph, keep)
    batch = torch.randn(3, *SHAPE)
    with torch.no_grad():
        want = pruned(batch)
        program = export_program(pruned, torch.randn(2, *SHAPE)).module()
        torch.testing.assert_close(program(batch), want, atol=1e-5, rtol=1e-4)
    path = export_onnx(pruned, torch.randn(2, *SHAPE), tmp_path / "m.onnx")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": batch.numpy()})[0]
    assert np.abs(got - want.numpy()).max() < 1e-4


@pytest.mark.parametrize("name", ["vit", "convnext"])
def test_builtin_modern_models_are_pruned_exactly(name: str) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(name, in_channels=1, num_classes=10).eval()
    shape = (1, 28, 28)
    graph = discover(model, torch.zeros(1, *shape))
    flops, params = FlopsCost(graph), ParamsCost(graph)
    assert (flops.base, params.base) == measured(model, shape)
    if name == "vit":
        assert [s.pattern for s in graph.layers] == ["channel"] + ["head", "channel"] * 4
    keep = np.random.default_rng(0).uniform(0.1, 1.0, len(graph)).tolist()
    pruned = prune_model(model, graph, keep)
    assert (flops.cost(keep), params.cost(keep)) == measured(pruned, shape)


def test_weight_granularity_counts_constant_attention_flops() -> None:
    model = build("vit")
    graph = discover(model, torch.zeros(1, *SHAPE))
    keep = [0.5] * len(graph)
    pruned = prune_model(model, graph, keep, granularity="weight")
    attention = sum(r.base_flops for r in graph.modules if r.type == "attention")
    sparse = attention + sum(2 * r.positions * int((pruned.get_submodule(r.name).weight != 0).sum())
                             for r in graph.modules if r.type in ("conv", "linear", "depthwise"))
    assert FlopsCost(graph, granularity="weight").cost(keep) == sparse
    zeroed = sum(int((m.weight == 0).sum()) for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert ParamsCost(graph, granularity="weight").cost(keep) == ParamsCost(graph).base - zeroed
    base = dict(model.named_parameters())
    assert all(torch.equal(p, base[n]) for n, p in pruned.named_parameters()
               if not n.endswith("weight") or p.dim() == 1)  # norms, tokens, biases: untouched


# ---------------------------------------------------------------- what discovery cannot prune

def test_channel_shuffle_is_refused_in_one_line() -> None:
    with pytest.raises(UnsupportedModelError) as info:
        discover(mm.ShuffleNet().eval(), torch.zeros(1, *SHAPE))
    message = str(info.value)
    assert "channel shuffle" in message and "ShuffleNet" in message and "\n" not in message


def test_multihead_attention_stream_is_a_group_decision() -> None:
    """``nn.MultiheadAttention``'s stream (the conv that feeds it) is pruned at the same offset in every head,
    costed exactly (issue 35: it used to keep its width, the model refused when nothing else was prunable)."""
    model = mm.MhaNet(3, 5, hidden=8).eval()
    graph = discover(model, torch.zeros(1, *SHAPE))
    assert graph.names == ("embed", "hidden") and graph.layers[0].pattern == "group"
    assert graph.skipped == ()
    flops, params = FlopsCost(graph), ParamsCost(graph)
    for keep in ([0.5, 0.5], [0.25, 1.0], [1.0, 0.25]):
        pruned = prune_model(model, graph, keep)
        assert (flops.cost(keep), params.cost(keep)) == measured(pruned)
        assert pruned(torch.zeros(2, *SHAPE)).shape == (2, 5)


@pytest.mark.parametrize(("model", "fragments"), [
    (mm.MatmulNet(3), ("MatmulNet", "FLOPs", "num_heads")),
])
def test_models_with_unmodelled_parts_are_refused_in_one_line(model: nn.Module, fragments: tuple) -> None:
    with pytest.raises(UnsupportedModelError) as info:
        discover(model.eval(), torch.zeros(1, *SHAPE))
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_search_cli_exits_2_on_an_unsupported_model(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    checkpoint = tmp_path / "shuffle.pt"
    torch.save(mm.shuffle_net(1, 10).state_dict(), checkpoint)
    done = forkserver.run(
        [sys.executable, str(root / "scripts" / "search.py"), "--model", "tests.amc.modern_models:shuffle_net",
         "--checkpoint", str(checkpoint), "--dataset", "digits", "--budget", "0.5", "--out", str(tmp_path / "run")],
        cwd=root, capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                                                   "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and "channel shuffle" in lines[0] and "ShuffleNet" in lines[0], lines
