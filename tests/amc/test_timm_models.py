"""timm's ViT, Swin and EfficientFormer through ``timm:NAME`` (issue 35, acceptance 1): discovery, exact costs,
pruned forward, export.

Tiny random-init configs built by :mod:`amc.models.from_timm` (nothing is downloaded). Oracle as in
test_hf_attention.py: the analytic FLOPs and parameters of 20 random policies equal what FlopCounterMode (with the
CPU attention kernels counted: :func:`amc.graph.probe.counting_flops`) and the parameter count measure on the pruned
model. Marked ``timm``: they run in ``make test-timm``'s environment and skip where timm is missing.
"""

from __future__ import annotations

import copy
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from amc.cost.analytic import FlopsCost, ParamsCost
from amc.graph.discover import discover
from amc.graph.probe import counting_flops
from amc.models import build_model
from amc.pruning.pruner import prune_model
from tests.export_checks import assert_exports
from tests.optional import need

need("timm")
pytestmark = pytest.mark.timm

# name -> (timm:NAME, the image size it is built for, --model-kwargs): a few layers, a few channels each.
MODELS = {
    "vit": ("timm:vit_tiny_patch16_224", (8, 8), {"patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 4}),
    "swin": ("timm:swin_tiny_patch4_window7_224", (16, 16),
             {"patch_size": 2, "window_size": 4, "embed_dim": 16, "depths": (1, 1), "num_heads": (2, 4)}),
    # EfficientFormer (v1) attends over the 7x7 grid of its last stage: 224x224 images, however narrow the model.
    "efficientformer": ("timm:efficientformer_l1", (224, 224), {"depths": (1, 1, 1, 2), "embed_dims": (8, 8, 16, 16)}),
}


def build(name: str) -> tuple[nn.Module, tuple[int, int]]:
    ref, size, kwargs = MODELS[name]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(ref, in_channels=3, num_classes=5, input_size=size, **kwargs).eval()
    return model, size


def images(size: tuple[int, int], batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(batch))


def measured(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    with counting_flops() as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops(), sum(p.numel() for p in model.parameters())


def decisions(graph) -> list[tuple[str, str, int, int]]:
    return [(s.name, s.pattern, s.out_channels, s.unit) for s in graph.layers]


def test_vit_decisions_are_the_embedding_heads_and_mlp_widths() -> None:
    model, size = build("vit")
    graph = discover(model, images(size))
    assert decisions(graph) == [("patch_embed.proj", "channel", 32, 1),
                                ("blocks.0.attn", "head", 4, 8), ("blocks.0.mlp.fc1", "channel", 128, 1),
                                ("blocks.1.attn", "head", 4, 8), ("blocks.1.mlp.fc1", "channel", 128, 1)]
    assert not graph.skipped
    assert {"cls_token", "pos_embed"} <= set(graph[0].parameters)  # the embedding width cuts both


def test_swin_mlps_and_merges_are_decisions_and_what_breaks_keeps_its_width(caplog) -> None:
    """The window attention's heads (a relative position bias per head) and the embedding stream keep their
    width with a warning naming each, instead of a traceback (the crash this issue reported)."""
    model, size = build("swin")
    with caplog.at_level(logging.WARNING, logger="amc.graph.discover"):
        graph = discover(model, images(size))
    assert decisions(graph) == [("layers.0.blocks.0.mlp.fc1", "channel", 64, 1),
                                ("layers.1.downsample.reduction", "channel", 32, 1),
                                ("layers.1.blocks.0.mlp.fc1", "channel", 128, 1)]
    kept = {s.name for s in graph.skipped}
    assert kept == {"patch_embed.proj", "layers.0.blocks.0.attn", "layers.1.blocks.0.attn"}
    assert "keep their width" in caplog.text and all(name in caplog.text for name in kept)


def test_efficientformer_with_its_attention_bias_cache_filled_discovers_and_prunes() -> None:
    """A forward in eval mode fills timm's per-device attention-bias cache with a non-leaf tensor, which
    copy.deepcopy refused (the crash this issue reported): discovery and pruning release it."""
    model, size = build("efficientformer")
    model(images(size))  # with gradients: the cached bias is non-leaf
    with pytest.raises(RuntimeError, match="graph leaves"):
        copy.deepcopy(model)
    graph = discover(model, images(size))
    assert [s.name for s in graph.layers if s.name.startswith("stem")] == ["stem.conv1", "stem.conv2"]
    assert sum(s.name.endswith("mlp.fc1") for s in graph.layers) == 5  # one per block
    pruned = prune_model(model, graph, [0.5] * len(graph))
    with torch.no_grad():
        assert pruned(images(size, 2)).shape == (2, 5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_costs_are_exact_and_pruned_models_run(name: str) -> None:
    model, size = build(name)
    x = images(size)
    graph = discover(model, x)
    flops, params = FlopsCost(graph), ParamsCost(graph)
    assert (flops.base, params.base) == measured(model, x)
    rng = random.Random(0)
    for _ in range(20):
        keep = [rng.uniform(0.01, 1.0) for _ in graph.layers]
        pruned = prune_model(model, graph, keep)
        assert (flops.cost(keep), params.cost(keep)) == measured(pruned, x), keep
        with torch.no_grad():
            out = pruned(images(size, 2))
        assert out.shape == (2, 5) and torch.isfinite(out).all()
    assert flops.cost([0.01] * len(graph)) < flops.base  # the decisions shrink the model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pruned_models_export_with_torch_export_and_onnx(name: str, tmp_path: Path) -> None:
    model, size = build(name)
    graph = discover(model, images(size))
    keep = np.random.default_rng(1).uniform(0.2, 0.9, len(graph)).tolist()
    assert_exports(prune_model(model, graph, keep), images(size, 2), images(size, 3), tmp_path)
