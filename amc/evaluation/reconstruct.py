"""Least-squares reconstruction: refit the layers after each pruned one to reproduce the base model.

The numerics of the ``reconstruct`` candidate score (:class:`amc.evaluation.scores.Reconstruct`): He et
al. 2017 ("Channel pruning for accelerating very deep neural networks") refit each layer whose inputs lost
channels so that, on sampled feature-map points, it reproduces the base model's output; AMC samples ~10
points from each of 60 images. Here the fit is a ridge regression towards the layer's current weights.

A candidate costs one forward pass of its calibration images: hooks refit each layer as the pass reaches
it, so every layer sees its input after the refits before it (the result of one pass per refitted layer,
which ``one_pass=False`` still runs). The base model's outputs do not depend on the candidate:
:class:`BaseOutputs` computes them once per evaluator.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amc.graph.discover import LayerGraph

log = logging.getLogger(__name__)

BASE_OUTPUT_BYTES = 1 << 30  # base outputs kept for later candidates up to this size; beyond, recomputed
CHUNK_BYTES = 8 << 20  # float64 patch rows built per chunk of images: small enough to reuse freed memory (no page faults)


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
        try:
            module = pruned.get_submodule(rec.name)
        except AttributeError:  # inside a block the policy dropped (replaced by the identity): nothing to refit
            continue
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            continue
        spec = owner.get(rec.name)
        if spec is not None and spec.pattern != "channel":
            continue
        outputs = None if spec is None or len(kept[spec.name]) == spec.out_channels else kept[spec.name]
        targets[rec.name] = outputs
    return targets


class BaseOutputs:
    """The base model's outputs of named layers on fixed images, computed once and kept (up to
    :data:`BASE_OUTPUT_BYTES`; layers past that are recomputed when asked for).

    Args:
        base: The base model (only run, never modified).
        images: The calibration images (N, C, H, W).
    """

    def __init__(self, base: nn.Module, images: Tensor) -> None:
        self.base = base
        self.images = images
        self._kept: dict[str, Tensor] = {}
        self._bytes = 0

    def get(self, names: Sequence[str]) -> dict[str, Tensor]:
        """Layer name -> the base model's output (N, C_base, ...) on :attr:`images`; one base pass for those not kept."""
        missing = [n for n in names if n not in self._kept]
        got = _outputs(self.base, missing, self.images) if missing else {}
        for name, out in got.items():
            size = out.numel() * out.element_size()
            if self._bytes + size <= BASE_OUTPUT_BYTES:
                self._kept[name] = out
                self._bytes += size
        return {n: self._kept[n] if n in self._kept else got[n] for n in names}


def reconstruct(pruned: nn.Module, base: nn.Module, targets: Mapping[str, Sequence[int] | None], inputs: Tensor, *,
                points: int = 1000, seed: int = 0, ridge: float = 1.0, wanted: Mapping[str, Tensor] | None = None,
                one_pass: bool = True) -> list[str]:
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
        wanted: The base model's outputs of the targets on ``inputs`` (:class:`BaseOutputs`); None: computed here.
        one_pass: Refit every target in one forward pass of ``pruned`` (hooks refit each layer as the pass
            reaches it) and build the normal equations without copying the samples (:func:`_normal_equations`);
            False runs one pass per target on the sampled rows, the computation this replaced (the same
            result but for the order of float64 sums). Targets that the pass reaches out of ``targets``'
            order are refitted one pass each, so the result does not depend on it.

    Returns:
        The names of the layers refitted.
    """
    generator = torch.Generator().manual_seed(seed)
    if wanted is None:
        wanted = _outputs(base, list(targets), inputs)  # name -> (N, C_base, ...) base outputs

    def refit(name: str, x: Tensor) -> None:
        kept = targets[name]
        layer = pruned.get_submodule(name)
        # The kept output channels: dim 1 of a conv's (N, C, H, W), the last dim of a linear's (N, ..., C)
        # (a transformer's linears see (N, tokens, C)).
        y = wanted[name] if kept is None else wanted[name].index_select(
            -1 if isinstance(layer, nn.Linear) else 1, torch.as_tensor(list(kept), device=wanted[name].device))
        if one_pass:
            _refit_normal(layer, *_normal_equations(layer, x, y, points, generator), ridge)
        else:
            features, target = _samples(layer, x, y, points, generator)  # (S, F), (S, out)
            _refit(layer, features, target, ridge)

    done = _refit_in_one_pass(pruned, list(targets), inputs, refit) if one_pass else []
    for name in list(targets)[len(done):]:
        refit(name, _inputs(pruned, name, inputs))  # the pruned model's input to the layer, after earlier refits
        done.append(name)
    return done


def _refit_in_one_pass(model: nn.Module, order: list[str], inputs: Tensor, refit) -> list[str]:
    """Refits the targets, in ``order``, as one forward pass of ``model`` reaches them; returns those refitted.

    Stops refitting at the first target the pass reaches before one that precedes it in ``order`` (its
    input would then differ from the one-pass-per-target result); the caller refits the rest.
    """
    done: list[str] = []
    stopped = False
    if not order:
        return done

    def hook(module: nn.Module, args: tuple, name: str) -> None:
        nonlocal stopped
        if stopped or name in done:
            return  # a layer called again sees its refitted weights, as in a pass of its own
        if order[len(done)] != name:
            stopped = True
            log.debug("reconstruction: %s runs before %s; refitting the rest one pass each", name, order[len(done)])
            return
        refit(name, args[0].detach())
        done.append(name)
        if len(done) == len(order):
            raise _AllRefitted  # the rest of the pass changes nothing

    handles = [model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: hook(m, a, n)) for n in order]
    try:
        with torch.no_grad():
            model.eval()(inputs)
    except _AllRefitted:
        pass
    finally:
        for h in handles:
            h.remove()
    return done


class _AllRefitted(Exception):
    """Ends the refitting pass once its last target is refitted."""


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


def _normal_equations(layer: nn.Module, x: Tensor, y: Tensor, points: int, generator) -> tuple[Tensor, Tensor]:
    """``(A^T A, A^T Y)`` in float64 of :func:`_samples`' rows ``A = [features | 1]`` (the ones column only
    with a bias) and targets ``Y``, without materialising them: the same random draws, the patches summed
    in place of gathered when every position is sampled (the sums do not depend on the rows' order).

    A conv's features are built offset by offset (:func:`_offset_rows`: one float64 copy of the input per
    kernel offset, no ``unfold``), and ``A^T A`` from its blocks on and above the diagonal (the rest is their
    mirror): a 3x3 conv multiplies 45 of the 81 blocks."""
    if isinstance(layer, nn.Linear):
        feats, target = x.reshape(-1, x.shape[-1]).T.double(), y.reshape(-1, y.shape[-1]).T.double()  # (F, S), (out, S)
        return _with_bias(feats @ feats.T, feats @ target.T, feats.sum(1), target.sum(1), feats.shape[1],
                          layer.bias is not None)
    n = len(x)
    positions = y.shape[2] * y.shape[3]
    pick = torch.stack([torch.randperm(positions, generator=generator)[:points] for _ in range(n)])  # (N, P)
    pick = pick.to(x.device) if points < positions else None  # None: every position, in any order
    (kh, kw), c, out = layer.kernel_size, x.shape[1], y.shape[1]
    k, width = kh * kw, positions if pick is None else pick.shape[1]
    gram = x.new_zeros(k * c, k * c, dtype=torch.float64)
    rhs = x.new_zeros(k * c, out, dtype=torch.float64)
    sums = x.new_zeros(k * c, dtype=torch.float64)
    target_sums = x.new_zeros(out, dtype=torch.float64)
    step = max(1, CHUNK_BYTES // (8 * k * c * width))  # images per chunk
    for first in range(0, n, step):
        chunk = slice(first, first + step)
        feats = _offset_rows(layer, x[chunk], y.shape[2:], None if pick is None else pick[chunk])  # (K*C, s)
        target = y[chunk].flatten(2)  # (s_n, out, L)
        if pick is not None:
            target = target.gather(2, pick[chunk, None, :].expand(-1, out, -1))  # (s_n, out, P)
        target = _rows_last(target)  # (out, s)
        for a in range(k):  # the blocks on and right of the diagonal, one row of blocks per product
            gram[a * c:(a + 1) * c, a * c:].addmm_(feats[a * c:(a + 1) * c], feats[a * c:].T)
        rhs.addmm_(feats, target.T)
        sums += feats.sum(1)
        target_sums += target.sum(1)
    for a in range(1, k):  # the mirror below the diagonal
        gram[a * c:(a + 1) * c, : a * c] = gram[: a * c, a * c:(a + 1) * c].T
    # unfold's order is channel-major (feature c * K + k): reorder from offset-major (k * C + c)
    gram = gram.view(k, c, k, c).permute(1, 0, 3, 2).reshape(c * k, c * k)
    rhs = rhs.view(k, c, out).transpose(0, 1).reshape(c * k, out)
    sums = sums.view(k, c).T.reshape(-1)
    return _with_bias(gram, rhs, sums, target_sums, n * width, layer.bias is not None)


def _with_bias(gram: Tensor, rhs: Tensor, sums: Tensor, target_sums: Tensor, samples: int,
               has_bias: bool) -> tuple[Tensor, Tensor]:
    """``(A^T A, A^T Y)`` with ``A``'s ones column appended when the layer has a bias."""
    if not has_bias:
        return gram, rhs
    f = len(gram)
    normal = gram.new_empty(f + 1, f + 1)
    normal[:f, :f] = gram
    normal[-1, :-1], normal[:-1, -1], normal[-1, -1] = sums, sums, samples
    return normal, torch.cat([rhs, target_sums[None]])  # (F+1, F+1), (F+1, out)


def _offset_rows(layer: nn.Conv2d, x: Tensor, out_hw: tuple[int, int], pick: Tensor | None) -> Tensor:
    """``unfold``'s patch rows one kernel offset at a time, in float64: (K * C, S), where rows ``k * C`` to
    ``(k + 1) * C`` (offset ``(i, j)``, ``k = i * kw + j``) hold the (padded) input each output position reads
    there, at the ``pick``ed positions of each image (None: all)."""
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    ho, wo = out_hw
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    padded = F.pad(x, _padding(layer), mode=mode)  # (N, C, H + top + bottom, W + left + right), as the conv pads
    n, c = x.shape[:2]
    width = ho * wo if pick is None else pick.shape[1]
    rows = torch.empty(kh * kw, c, n, width, dtype=torch.float64, device=x.device)
    for i in range(kh):
        for j in range(kw):
            view = padded[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
            if pick is None:
                rows[i * kw + j].view(c, n, ho, wo).copy_(view.transpose(0, 1))
            else:
                picked = view.reshape(n, c, ho * wo).gather(2, pick[:, None, :].expand(-1, c, -1))  # (N, C, P)
                rows[i * kw + j].copy_(picked.transpose(0, 1))
    return rows.view(kh * kw * c, n * width)


def _padding(layer: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom): the padding ``layer`` applies to its input (``"same"``: the extra one on
    the right and bottom, as torch pads)."""
    if layer.padding == "valid":
        return 0, 0, 0, 0
    if layer.padding == "same":
        (th, tw) = (d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size))
        return tw // 2, tw - tw // 2, th // 2, th - th // 2
    ph, pw = layer.padding
    return pw, pw, ph, ph


def _rows_last(t: Tensor) -> Tensor:
    """(N, C, P) -> (C, N * P) float64, in one copy."""
    out = torch.empty(t.shape[1], t.shape[0], t.shape[2], dtype=torch.float64, device=t.device)
    out.copy_(t.transpose(0, 1))
    return out.view(t.shape[1], -1)


def _refit_normal(layer: nn.Module, normal: Tensor, rhs: Tensor, ridge: float) -> None:
    """:func:`_refit` from the normal equations ``A^T A``, ``A^T Y`` (float64)."""
    weight = layer.weight.detach().reshape(layer.weight.shape[0], -1)  # (out, F)
    w0 = torch.cat([weight, layer.bias.detach()[:, None]], 1) if layer.bias is not None else weight  # (out, F+1)
    w64 = w0.double()
    lam = ridge * float(normal.diagonal().mean()) + 1e-12
    solved = torch.linalg.solve(normal + lam * torch.eye(len(normal), dtype=torch.float64, device=normal.device),
                                rhs + lam * w64.T).T.to(weight.dtype)  # (out, F+1)
    with torch.no_grad():
        layer.weight.copy_(solved[:, : weight.shape[1]].reshape(layer.weight.shape))
        if layer.bias is not None:
            layer.bias.copy_(solved[:, -1])


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


__all__ = ["BASE_OUTPUT_BYTES", "BaseOutputs", "reconstruct", "reconstruction_targets"]
