"""Depth pruning (issue 34): removable blocks found from the traced forward pass, dropped for real, costed exactly.

Oracle tests as in test_cost.py: the FLOPs and parameters :class:`DepthCost` gives for random width + depth
policies equal what FlopCounterMode and the parameter count measure on the pruned-and-dropped model.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from amc.cost.analytic import FlopsCost, ParamsCost
from amc.errors import ConfigError
from amc.graph.blocks import Block, find_blocks, no_blocks_message, require_blocks
from amc.graph.discover import discover
from amc.graph.probe import counting_flops
from amc.models import build_model
from amc.pruning.depth import DepthCost, canonical_keep, drop_blocks, irrelevant_decisions, outermost
from amc.pruning.export import export_onnx, export_program
from amc.pruning.pruner import Pruner, prune_model

N_POLICIES = 20

# name -> (input shape, factory kwargs): tiny inputs, the built-in models.
MODELS = {
    "resnet20": ((1, 16, 16), {}),
    "resnet56": ((3, 8, 8), {}),
    "mobilenetv2": ((3, 16, 16), {"width_mult": 0.35}),
    "vit": ((1, 8, 8), {}),
    "convnext": ((1, 16, 16), {}),
}


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    shape, kwargs = MODELS.get(name, ((1, 8, 8), {}))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_model(name, in_channels=shape[0], num_classes=10, **kwargs).eval(), shape


def measured(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    with counting_flops() as counter:
        model(torch.zeros(1, *shape))
    return counter.get_total_flops(), sum(p.numel() for p in model.parameters())


def setup(name: str):
    model, shape = build(name)
    graph = discover(model, torch.zeros(1, *shape))
    return model, shape, graph, find_blocks(model, torch.zeros(1, *shape), graph=graph)


# ---------------------------------------------------------------- which blocks are removable

def test_resnet_blocks_are_those_with_an_identity_shortcut() -> None:
    for name in ("resnet20", "resnet56"):
        model, shape, graph, blocks = setup(name)
        expected = [f"layers.{i}" for i, b in enumerate(model.layers) if isinstance(b.shortcut, nn.Identity)]
        assert [b.name for b in blocks] == expected and len(expected) == {"resnet20": 7, "resnet56": 25}[name]
        assert {b.kind for b in blocks} == {"activated"}  # relu(x + f(x))
        first = blocks[0]
        assert first.decisions == ("layers.0.conv1",)  # conv2 is on the residual stream: shared with the skip
        assert first.records == ("layers.0.conv1", "layers.0.bn1", "layers.0.conv2", "layers.0.bn2")


def test_mobilenet_vit_and_convnext_blocks() -> None:
    model, _, _, blocks = setup("mobilenetv2")
    expected = [f"features.{i}" for i, m in enumerate(model.features) if getattr(m, "use_residual", False)]
    assert [b.name for b in blocks] == expected and len(expected) > 5
    assert all(b.kind == "residual" and b.decisions == (f"{b.name}.block.0.0",) for b in blocks)  # the expansion
    _, _, _, blocks = setup("vit")
    assert [b.name for b in blocks] == [f"blocks.{i}" for i in range(4)]  # not the Sequential "blocks" itself
    assert blocks[0].decisions == ("blocks.0.attn", "blocks.0.mlp.fc1")
    _, _, _, blocks = setup("convnext")
    assert [b.name for b in blocks] == ["stages.0.0", "stages.1.2", "stages.2.2", "stages.2.3"]
    assert "stages.0.0.gamma" in blocks[0].records and blocks[0].decisions == ("stages.0.0.fc1",)


def test_a_model_without_an_identity_skip_has_no_block_and_depth_says_so_in_one_line() -> None:
    model, shape = build("cnn")
    assert find_blocks(model, torch.zeros(1, *shape)) == []
    with pytest.raises(ConfigError) as info:
        require_blocks(find_blocks(model, torch.zeros(1, *shape)), "cnn")
    assert str(info.value) == no_blocks_message("cnn") and "\n" not in str(info.value)
    assert "model cnn has no removable block" in str(info.value) and "without --depth" in str(info.value)


def test_in_place_addition_is_a_block_a_projected_skip_is_not() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, padding=1)
            self.res = InPlace()
            self.proj = Projected()
            self.head = nn.Linear(8, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.proj(self.res(self.stem(x))).mean((2, 3)))

    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a1, self.a2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)

        def forward(self, x: Tensor) -> Tensor:
            out = self.a2(self.a1(x).relu())
            out += x
            return torch.relu(out)

    class Projected(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.b1, self.skip = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.b1(x) + self.skip(x)

    blocks = find_blocks(Net().eval(), torch.zeros(1, 1, 6, 6))
    assert [(b.name, b.kind, b.decisions) for b in blocks] == [("res", "activated", ("res.a1",))]


# ---------------------------------------------------------------- exact costs

@pytest.mark.parametrize("name", sorted(MODELS))
def test_width_and_depth_costs_equal_the_measured_costs(name: str) -> None:
    model, shape, graph, blocks = setup(name)
    flops, params = DepthCost(FlopsCost(graph), blocks), DepthCost(ParamsCost(graph), blocks)
    assert (flops.cost([1.0] * len(graph)), params.cost([1.0] * len(graph))) == measured(model, shape)
    pruner = Pruner(model, graph)
    rng = random.Random(0)
    sizes = set()
    for i in range(N_POLICIES):
        keep = [rng.uniform(0.01, 1.0) for _ in graph.layers]
        dropped = [b.name for b in blocks if rng.random() < 0.4] if i else [b.name for b in blocks]
        sizes.add(len(dropped))
        pruned = drop_blocks(pruner.prune(keep), dropped, inplace=True)
        assert (flops.cost(keep, dropped), params.cost(keep, dropped)) == measured(pruned, shape), (keep, dropped)
        assert flops.cost(keep, dropped) <= flops.cost(keep)
    assert len(sizes) > 2  # none, some and all blocks dropped among the policies


def test_widths_inside_a_dropped_block_are_irrelevant() -> None:
    model, shape, graph, blocks = setup("vit")
    cost = DepthCost(FlopsCost(graph), blocks)
    dropped = ["blocks.1"]
    assert [graph.names[d] for d in irrelevant_decisions(graph, blocks, dropped=dropped)] == ["blocks.1.attn",
                                                                                     "blocks.1.mlp.fc1"]
    keep = [0.5] * len(graph)
    canonical = canonical_keep(graph, blocks, keep, dropped=dropped)
    assert canonical == [1.0 if n.startswith("blocks.1.") else 0.5 for n in graph.names]
    assert cost.cost(keep, dropped) == cost.cost(canonical, dropped) < cost.cost(canonical)
    a, b = prune_model(model, graph, keep), prune_model(model, graph, canonical)
    x = torch.randn(2, *shape)
    with torch.no_grad():  # the same model: the dropped block's widths changed nothing
        torch.testing.assert_close(drop_blocks(a, dropped)(x), drop_blocks(b, dropped)(x))


def test_bad_names_and_other_cost_models_are_refused() -> None:
    model, _, graph, blocks = setup("resnet20")
    with pytest.raises(ConfigError, match="'layers.3'.*not removable"):
        DepthCost(FlopsCost(graph), blocks).cost([1.0] * len(graph), ["layers.3"])  # a downsampling block
    with pytest.raises(ConfigError, match="no such submodule"):
        drop_blocks(model, ["layers.99"])
    with pytest.raises(ConfigError, match="channel granularity"):
        DepthCost(FlopsCost(graph, granularity="weight"), blocks)


def test_nested_blocks_count_once() -> None:
    outer = Block("a", "X", "residual", (), (), 10, 4, 3, 1)
    inner = Block("a.b", "X", "residual", (), (), 5, 2, 1, 1)
    other = Block("ab", "X", "residual", (), (), 5, 2, 1, 1)  # a name prefix, not inside "a"
    assert outermost([outer, inner, other], ["a.b", "a", "ab"]) == [outer, other]


# ---------------------------------------------------------------- a real, smaller model

@pytest.mark.parametrize("name", ["resnet20", "vit"])
def test_dropped_blocks_leave_the_exported_program_and_onnx_agrees(name: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    model, shape, graph, blocks = setup(name)
    keep = np.random.default_rng(1).uniform(0.3, 0.9, len(graph)).tolist()
    dropped = [blocks[0].name, blocks[-1].name]
    pruned = prune_model(model, graph, keep)
    smaller = drop_blocks(pruned, dropped)
    assert all(isinstance(smaller.get_submodule(n), nn.Identity) for n in dropped)
    assert not isinstance(pruned.get_submodule(dropped[0]), nn.Identity)  # a copy: the pruned model is kept
    example, batch = torch.randn(2, *shape), torch.randn(3, *shape)

    def operators(m: nn.Module) -> int:
        return sum(node.op == "call_function" for node in export_program(m, example).graph.nodes)

    assert operators(smaller) < operators(pruned)
    with torch.no_grad():
        want = smaller(batch)
        torch.testing.assert_close(export_program(smaller, example).module()(batch), want, atol=1e-5, rtol=1e-4)
    path = export_onnx(smaller, example, tmp_path / "m.onnx")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": batch.numpy()})[0]
    assert got.shape == (3, 10) and np.abs(got - want.numpy()).max() < 1e-4
