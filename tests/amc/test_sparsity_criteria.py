"""Criteria inside one layer (amc.sparsity.criteria) against independent references.

SparseGPT is checked against a loop written from the paper's Algorithm 1 (Frantar & Alistarh 2023) in float64
with explicit inverses of the remaining columns' Hessian, ``(H_F)^-1`` for ``F = {j, ..., d-1}``, instead of
the Cholesky rows the implementation uses; Wanda against the reference's per-row sort (locuslab/wanda
``prune_wanda``); both on small layers with random calibration inputs.
"""

from __future__ import annotations

import pytest
import torch

from amc.errors import ConfigError
from amc.sparsity.criteria import (
    NM,
    magnitude,
    nm_mask,
    parse_level,
    sparsegpt,
    split_count,
    wanda,
)


def oracle_sparsegpt(W: torch.Tensor, H: torch.Tensor, *, count: int = 0, level: NM | None = None,
                     blocksize: int, percdamp: float = 0.01) -> torch.Tensor:
    """SparseGPT, column by column: the saliency of weight j is w_j^2 / [(H_F)^-1]_00 (OBS), chosen for a
    whole block at its start (unstructured, exactly ``count`` spread evenly over blocks) or per N:M group at
    the group's start; the pruned column's error goes to the later columns: W_F -= (w_j - q_j) /
    [(H_F)^-1]_00 * [(H_F)^-1]_0,:."""
    W, H = W.double().clone(), H.double().clone()
    rows, cols = W.shape
    H += percdamp * torch.diag(H).mean() * torch.eye(cols, dtype=H.dtype)
    inv0 = [torch.linalg.inv(H[j:, j:]) for j in range(cols)]  # (H_F)^-1 of F = {j, ...}
    sal_den = torch.tensor([inv0[j][0, 0] for j in range(cols)], dtype=H.dtype)
    pruned = torch.zeros(rows, cols, dtype=torch.bool)
    n_blocks = (cols + blocksize - 1) // blocksize
    for j in range(cols):
        if level is None and j % blocksize == 0:
            block = slice(j, min(j + blocksize, cols))
            saliency = W[:, block] ** 2 / sal_den[block]
            order = torch.sort(saliency.flatten(), stable=True).indices[: count // n_blocks]
            flat = torch.zeros(saliency.numel(), dtype=torch.bool)
            flat[order] = True
            pruned[:, block] = flat.view_as(saliency)
        if level is not None and j % level.group == 0:
            group = slice(j, j + level.group)
            saliency = W[:, group] ** 2 / sal_den[group]
            drop = torch.topk(saliency, level.group - level.keep, dim=1, largest=False).indices
            pruned[:, group] = torch.zeros_like(saliency, dtype=torch.bool).scatter_(1, drop, True)
        q = torch.where(pruned[:, j], torch.zeros_like(W[:, j]), W[:, j])
        err = (W[:, j] - q) / inv0[j][0, 0]  # (rows,)
        W[:, j:] -= err[:, None] * inv0[j][0][None, :]
        W[:, j] = q
    return W


def layer_problem(rows: int = 6, cols: int = 16, tokens: int = 64, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, cols, generator=generator) * torch.linspace(0.2, 3.0, cols)  # uneven feature scales
    X[:, 3] += 2.0 * X[:, 5]  # correlated inputs: where second-order reconstruction pays
    W = torch.randn(rows, cols, generator=generator)
    return W, X, X.t() @ X / tokens


@pytest.mark.parametrize("blocksize", [16, 8, 4])
def test_sparsegpt_unstructured_equals_the_paper_loop(blocksize: int) -> None:
    W, _, H = layer_problem()
    got, keep = sparsegpt(W, H, count=48, blocksize=blocksize)
    want = oracle_sparsegpt(W, H, count=48, blocksize=blocksize)
    assert int((~keep).sum()) == 48 and int((got == 0).sum()) == 48
    torch.testing.assert_close(got.double(), want, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("level", [NM(2, 4), NM(1, 4), NM(4, 8)])
def test_sparsegpt_nm_equals_the_paper_loop_and_has_the_pattern(level: NM) -> None:
    W, _, H = layer_problem()
    got, keep = sparsegpt(W, H, level=level, blocksize=8)
    torch.testing.assert_close(got.double(), oracle_sparsegpt(W, H, level=level, blocksize=8), atol=2e-4, rtol=1e-4)
    per_group = keep.reshape(6, -1, level.group).sum(-1)
    assert bool((per_group == level.keep).all())
    assert bool(((got != 0) == keep).all())


def test_sparsegpt_reconstructs_better_than_magnitude_and_no_better_than_least_squares() -> None:
    W, X, H = layer_problem(rows=8, cols=32, tokens=128, seed=1)
    new, keep = sparsegpt(W, H, count=W.numel() // 2, blocksize=8)
    err = lambda w: float(((X @ W.t() - X @ w.t()) ** 2).sum())
    magnitude_keep = magnitude(W, count=W.numel() // 2)
    assert err(new) < 0.9 * err(W * magnitude_keep)
    # Least squares over the kept weights of each row is the best any reconstruction with this mask can do.
    best = torch.zeros_like(W)
    for r in range(W.shape[0]):
        idx = keep[r].nonzero().flatten()
        best[r, idx] = torch.linalg.lstsq(X[:, idx].double(), (X @ W[r]).double()).solution.float()
    assert err(best) <= err(new) * (1 + 1e-4)


def test_wanda_equals_the_reference_per_row_sort() -> None:
    W, X, _ = layer_problem(rows=8, cols=20)
    norms = X.norm(dim=0)
    keep = wanda(W, norms, count=8 * 10)
    metric = W.abs() * norms.reshape(1, -1)
    reference = torch.ones_like(W, dtype=torch.bool)
    reference.scatter_(1, torch.sort(metric, dim=-1, stable=True).indices[:, :10], False)  # prune_wanda, s = 0.5
    assert torch.equal(keep, reference)
    uneven = wanda(W, norms, count=8 * 10 + 3)  # the first 3 rows lose one more
    assert (~uneven).sum(1).tolist() == [11, 11, 11, 10, 10, 10, 10, 10]


def test_magnitude_removes_exactly_the_smallest_weights_of_the_layer() -> None:
    W, _, _ = layer_problem()
    keep = magnitude(W, count=37)
    assert int((~keep).sum()) == 37
    assert float(W.abs()[~keep].max()) <= float(W.abs()[keep].min())


def test_nm_masks_keep_n_of_every_m_largest() -> None:
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.1, 0.4, 0.3, 0.2]])
    assert nm_mask(scores, NM(2, 4)).int().tolist() == [[1, 0, 1, 0, 0, 1, 1, 0]]
    assert nm_mask(scores, NM(1, 4)).int().tolist() == [[1, 0, 0, 0, 0, 1, 0, 0]]
    with pytest.raises(ConfigError, match="no multiple of 3"):
        nm_mask(scores, NM(1, 3))


def test_levels_parse_and_counts_split() -> None:
    assert parse_level("2:4") == NM(2, 4) and parse_level("dense").dense and str(NM(1, 4)) == "1:4"
    assert NM(2, 4).sparsity == 0.5
    with pytest.raises(ConfigError, match="'dense' or 'N:M'"):
        parse_level("half")
    with pytest.raises(ConfigError, match="1..M"):
        NM(5, 4)
    assert split_count(10, [4, 4, 4]) == [4, 3, 3] and sum(split_count(7, [5, 9])) == 7
