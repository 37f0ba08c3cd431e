"""The ``reconstruct`` score's normal equations (issue 33) against the sampled rows they replace.

:func:`amc.evaluation.reconstruct._normal_equations` builds ``(A^T A, A^T Y)`` from shifted copies of a
conv's input, in chunks of images and from the blocks on and above the diagonal; these tests compare it
with the explicit rows of :func:`~amc.evaluation.reconstruct._samples` (``unfold``) and, for the paddings
``unfold`` cannot express, with the conv itself (``Y = A [W | b]`` exactly, so ``A^T Y = A^T A [W | b]``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from amc.evaluation import reconstruct as rec


def _explicit(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, points: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    feats, target = rec._samples(layer, x, y, points, generator)  # (S, F), (S, out)
    a = feats.double()
    if layer.bias is not None:
        a = torch.cat([a, a.new_ones(len(a), 1)], 1)
    return a.T @ a, a.T @ target.double(), generator


CONVS = {
    "3x3": dict(in_channels=5, out_channels=4, kernel_size=3, padding=1),
    "3x3 no bias": dict(in_channels=5, out_channels=4, kernel_size=3, padding=1, bias=False),
    "stride 2": dict(in_channels=3, out_channels=6, kernel_size=3, stride=2, padding=1),
    "dilated 5x3": dict(in_channels=2, out_channels=3, kernel_size=(5, 3), dilation=(2, 1), padding=(4, 1)),
    "1x1 stride 2": dict(in_channels=7, out_channels=5, kernel_size=1, stride=2, bias=False),
    "valid": dict(in_channels=3, out_channels=2, kernel_size=3),
}


@pytest.mark.parametrize("points", [1000, 20])  # every position (summed) / a random subset (gathered)
@pytest.mark.parametrize("name", list(CONVS))
def test_the_normal_equations_are_those_of_the_sampled_rows(name: str, points: int, monkeypatch) -> None:
    monkeypatch.setattr(rec, "CHUNK_BYTES", 1)  # one image per chunk: the chunks' sums add up
    torch.manual_seed(0)
    layer = nn.Conv2d(**CONVS[name])
    x = torch.randn(6, layer.in_channels, 11, 9)
    y = torch.randn_like(layer(x))  # any target of the output's shape
    normal, rhs, generator = _explicit(layer, x, y, points, seed=3)
    ours = torch.Generator().manual_seed(3)
    got_normal, got_rhs = rec._normal_equations(layer, x, y, points, ours)
    assert torch.allclose(got_normal, normal, rtol=1e-10, atol=1e-9)
    assert torch.allclose(got_rhs, rhs, rtol=1e-10, atol=1e-9)
    assert torch.equal(torch.rand(3, generator=ours), torch.rand(3, generator=generator))  # the same draws


@pytest.mark.parametrize("settings", [dict(padding="same"), dict(padding="same", kernel_size=4),
                                      dict(padding=1, padding_mode="reflect"), dict(padding=2, padding_mode="circular"),
                                      dict(padding="valid")])
def test_the_features_are_what_the_conv_reads_for_any_padding(settings: dict) -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(**{"in_channels": 3, "out_channels": 4, "kernel_size": 3, **settings})
    x = torch.randn(4, 3, 10, 10)
    with torch.no_grad():
        y = layer(x)
    normal, rhs = rec._normal_equations(layer, x, y, 1000, torch.Generator().manual_seed(0))
    weights = torch.cat([layer.weight.detach().reshape(4, -1), layer.bias.detach()[:, None]], 1).double()  # (out, F+1)
    assert torch.allclose(normal @ weights.T, rhs, rtol=1e-4, atol=1e-3)


def test_a_linear_on_tokens_pairs_every_token() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(6, 3)
    x = torch.randn(4, 5, 6)  # (N, tokens, C)
    y = torch.randn(4, 5, 3)
    normal, rhs, _ = _explicit(layer, x, y, 1000, seed=0)
    got_normal, got_rhs = rec._normal_equations(layer, x, y, 1000, torch.Generator().manual_seed(0))
    assert torch.allclose(got_normal, normal, rtol=1e-10) and torch.allclose(got_rhs, rhs, rtol=1e-10)
