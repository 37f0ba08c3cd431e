"""Least-squares reconstruction: refit the layers after each pruned one to reproduce the base model.

The numerics of the ``reconstruct`` candidate score (:class:`amc.evaluation.scores.Reconstruct`): He et
al. 2017 ("Channel pruning for accelerating very deep neural networks") refit each layer whose inputs lost
channels so that, on sampled feature-map points, it reproduces the base model's output; AMC samples ~10
points from each of 60 images. Here the fit is a ridge regression towards the layer's current weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amc.graph.discover import LayerGraph


def reconstruction_targets(graph: LayerGraph, kept: dict[str, list[int]], pruned: nn.Module) -> dict[str, list[int] | None]:
    """The layers least-squares reconstruction refits, in forward order, with the base outputs each kept.

    A target is a conv (``groups == 1``) or linear layer whose inputs lost channels; its outputs are all of
    the base layer's (None) or those its own channel decision kept. Layers in head or group decisions, and
    depthwise or grouped convs, keep their weights.
    """
    owner = {name: spec for spec in graph.layers for name in spec.members}
    pruned_decisions = {d for d, spec in enumerate(graph.layers) if len(kept.get(spec.name, ())) < spec.out_channels}
    targets: dict[str, list[int] | None] = {}
    for rec in graph.modules:
        if rec.type not in ("conv", "linear") or not any(d in pruned_decisions for d, _ in rec.in_deps):
            continue
        module = pruned.get_submodule(rec.name)
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            continue
        spec = owner.get(rec.name)
        if spec is not None and spec.pattern != "channel":
            continue
        outputs = None if spec is None or len(kept[spec.name]) == spec.out_channels else kept[spec.name]
        targets[rec.name] = outputs
    return targets


def reconstruct(pruned: nn.Module, base: nn.Module, targets: Mapping[str, Sequence[int] | None], inputs: Tensor, *,
                points: int = 1000, seed: int = 0, ridge: float = 1.0) -> list[str]:
    """Refits ``targets`` of ``pruned`` in forward order so that each reproduces the base model's output.

    For a target layer (a conv with ``groups == 1`` or a linear), the pruned model's own input to it
    (after the layers refitted before it) is paired with the base model's output of the same layer on
    the same images; up to ``points`` random output positions per image are sampled (AMC samples 10 from
    each of 60 images) and the weight and bias are refitted by ridge regression towards their current
    values (``ridge`` times the mean diagonal of the normal matrix). On resnet20 / fashion-mnist at budget
    0.3 (uniform policy, 60 images) a weak pull (0.001) overfits the samples and drops validation accuracy
    from 43.7% (adaptive BN alone) to 11.3%; 1.0 with up to 1,000 positions per image gives 74.4%.

    Args:
        targets: Layer name -> the base output channels the pruned layer kept (None: all of them).
        inputs: The images (N, C, H, W) both models see.

    Returns:
        The names of the layers refitted.
    """
    generator = torch.Generator().manual_seed(seed)
    wanted = _outputs(base, list(targets), inputs)  # name -> (N, C_base, ...) base outputs
    done = []
    for name, kept in targets.items():
        layer = pruned.get_submodule(name)
        x = _inputs(pruned, name, inputs)  # the pruned model's input to the layer, after earlier refits
        y = wanted[name] if kept is None else wanted[name][:, list(kept)]
        features, target = _samples(layer, x, y, points, generator)  # (S, F), (S, out)
        _refit(layer, features, target, ridge)
        done.append(name)
    return done


def _outputs(model: nn.Module, names: list[str], inputs: Tensor) -> dict[str, Tensor]:
    got: dict[str, Tensor] = {}
    handles = [model.get_submodule(n).register_forward_hook(lambda m, a, out, n=n: got.__setitem__(n, out.detach()))
               for n in names]
    try:
        with torch.no_grad():
            model.eval()(inputs)
    finally:
        for h in handles:
            h.remove()
    return got


def _inputs(model: nn.Module, name: str, inputs: Tensor) -> Tensor:
    got: list[Tensor] = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, args: got.append(args[0].detach()))
    try:
        with torch.no_grad():
            model.eval()(inputs)
    finally:
        handle.remove()
    return got[0]


def _samples(layer: nn.Module, x: Tensor, y: Tensor, points: int, generator) -> tuple[Tensor, Tensor]:
    """Input patches and target outputs at ``points`` random output positions per image."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])  # (S, in), (S, out)
    patches = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
                       stride=layer.stride)  # (N, in*kh*kw, L)
    n, _, positions = patches.shape
    pick = torch.stack([torch.randperm(positions, generator=generator)[:points] for _ in range(n)]).to(x.device)  # (N, P)
    feats = patches.gather(2, pick[:, None, :].expand(-1, patches.shape[1], -1))  # (N, F, P)
    target = y.flatten(2).gather(2, pick[:, None, :].expand(-1, y.shape[1], -1))  # (N, out, P)
    return feats.permute(0, 2, 1).reshape(-1, patches.shape[1]), target.permute(0, 2, 1).reshape(-1, y.shape[1])


def _refit(layer: nn.Module, features: Tensor, target: Tensor, ridge: float) -> None:
    """Ridge regression of ``[W | b]`` towards its current value: (A^T A + l I)^-1 (A^T Y + l W0)."""
    weight = layer.weight.detach().reshape(layer.weight.shape[0], -1)  # (out, F)
    has_bias = layer.bias is not None
    a = torch.cat([features, features.new_ones(len(features), 1)], 1) if has_bias else features  # (S, F+1)
    w0 = torch.cat([weight, layer.bias.detach()[:, None]], 1) if has_bias else weight  # (out, F+1)
    a64, y64, w64 = a.double(), target.double(), w0.double()
    normal = a64.T @ a64
    lam = ridge * float(normal.diagonal().mean()) + 1e-12
    solved = torch.linalg.solve(normal + lam * torch.eye(len(normal), dtype=torch.float64, device=normal.device),
                                a64.T @ y64 + lam * w64.T).T.to(weight.dtype)  # (out, F+1)
    with torch.no_grad():
        layer.weight.copy_(solved[:, : weight.shape[1]].reshape(layer.weight.shape))
        if has_bias:
            layer.bias.copy_(solved[:, -1])


__all__ = ["reconstruct", "reconstruction_targets"]
