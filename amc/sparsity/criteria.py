"""Which weights of one linear layer go: magnitude, Wanda and SparseGPT, unstructured or N:M.

Every criterion works on the layer's weight as ``(out, in)`` and returns the mask of the weights kept (1 kept,
0 pruned), plus new values for the kept weights where it reconstructs them (SparseGPT). Unstructured pruning
removes exactly ``count`` weights (the budget's integer count for the layer); N:M keeps ``n`` of every ``m``
consecutive input weights of each row (NVIDIA's 2:4 is ``NM(2, 4)``: half the weights go).

- ``magnitude``: the smallest ``|W|`` of the layer (layer-wide, as Wanda's and OWL's magnitude baseline).
- ``wanda``: the smallest ``|W_ij| * ||x_j||`` compared within each output row (Sun et al., "A Simple and
  Effective Pruning Approach for Large Language Models", 2023; locuslab/wanda ``prune_wanda``).
- ``sparsegpt``: OBS-style pruning with reconstruction of the remaining weights, column block by column block
  (Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot", 2023;
  IST-DASLab/sparsegpt ``fasterprune``): dampening 0.01 of the mean Hessian diagonal, blocks of 128 columns,
  the mask of each block chosen by ``w^2 / [H^-1]_jj^2`` when the block starts, each column's error spread
  over the later columns through the upper Cholesky factor of ``H^-1``. Unlike the reference's per-block
  threshold, each block removes an exact share of ``count`` (largest remainders), so the layer's count is exact.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor

from amc.errors import ConfigError

CRITERIA = ("magnitude", "wanda", "sparsegpt")


@dataclass(frozen=True)
class NM:
    """An N:M pattern: ``keep`` weights kept in every ``group`` consecutive input weights of a row."""

    keep: int
    group: int

    def __post_init__(self) -> None:
        if not (isinstance(self.keep, int) and isinstance(self.group, int) and 0 < self.keep <= self.group):
            raise ConfigError(f"an N:M pattern keeps 1..M of every M weights, got {self.keep}:{self.group}")

    @property
    def sparsity(self) -> float:
        return 1.0 - self.keep / self.group

    @property
    def dense(self) -> bool:
        return self.keep == self.group

    def __str__(self) -> str:
        return "dense" if self.dense else f"{self.keep}:{self.group}"


DENSE = NM(1, 1)


def parse_level(text: str | NM) -> NM:
    """``"dense"`` or ``"N:M"`` (``"2:4"``: 2 of every 4 kept) as an :class:`NM`."""
    if isinstance(text, NM):
        return text
    if str(text).strip().lower() == "dense":
        return DENSE
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(text))
    if match is None:
        raise ConfigError(f"an N:M level is 'dense' or 'N:M' such as '2:4' (2 of every 4 weights kept), got {text!r}")
    return NM(int(match.group(1)), int(match.group(2)))


def parse_levels(levels) -> tuple[NM, ...]:
    """Levels a unit may take (``("dense", "2:4", "1:4")``) as :class:`NM` patterns, densest first; ``()`` stays
    empty (unstructured sparsity).

    Raises:
        ConfigError: A text that is no level, or two levels with the same sparsity (a decision would not say which).
    """
    if isinstance(levels, (str, NM)):
        levels = (levels,)
    parsed = sorted({parse_level(x) for x in levels}, key=lambda x: (x.sparsity, x.group))
    for a, b in zip(parsed, parsed[1:]):
        if math.isclose(a.sparsity, b.sparsity):
            raise ConfigError(f"N:M levels {a} and {b} remove the same share of weights: keep one of them "
                              "(a unit's decision is its fraction of weights kept)")
    return tuple(parsed)


def split_count(count: int, sizes: list[int] | tuple[int, ...]) -> list[int]:
    """``count`` split over parts of the given sizes in proportion (largest remainders, earlier parts first)."""
    total = sum(sizes)
    if not 0 <= count <= total:
        raise ConfigError(f"cannot prune {count} of {total} weights")
    shares = [count * s / total for s in sizes]
    parts = [min(math.floor(x), s) for x, s in zip(shares, sizes)]
    order = sorted(range(len(sizes)), key=lambda i: (-(shares[i] - parts[i]), i))
    for i in order[: count - sum(parts)]:
        parts[i] += 1
    return parts


def _smallest(scores: Tensor, count: int) -> Tensor:
    """Keep mask (same shape) with the ``count`` smallest scores set to 0 (ties: lower index first)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if count:
        order = torch.sort(scores.flatten(), stable=True).indices
        keep[order[:count]] = False
    return keep.view_as(scores)


def unstructured_mask(scores: Tensor, count: int, *, per_row: bool) -> Tensor:
    """Keep mask removing exactly ``count`` weights with the smallest scores, layer-wide or row by row
    (``per_row``: each row loses ``count // rows``, the first ``count % rows`` rows one more)."""
    if not per_row:
        return _smallest(scores, count)
    rows, cols = scores.shape
    base, extra = divmod(count, rows)
    order = torch.sort(scores, dim=1, stable=True).indices  # (out, in)
    per = torch.full((rows, 1), base, device=scores.device)
    per[:extra] += 1
    ranks = torch.arange(cols, device=scores.device).expand(rows, cols)
    drop = ranks < per
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep.scatter_(1, order, ~drop)
    return keep


def nm_mask(scores: Tensor, level: NM) -> Tensor:
    """Keep mask with the ``level.keep`` largest scores of every ``level.group`` consecutive columns of each row."""
    rows, cols = scores.shape
    if level.dense:
        return torch.ones_like(scores, dtype=torch.bool)
    if cols % level.group:
        raise ConfigError(f"a layer with {cols} inputs cannot take {level} sparsity ({cols} is no multiple of "
                          f"{level.group}): use per-layer levels and leave it dense, or another M")
    groups = scores.reshape(rows, cols // level.group, level.group)
    top = torch.topk(groups, level.keep, dim=2).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, top, True)
    return keep.reshape(rows, cols)


def magnitude(weight: Tensor, *, count: int | None = None, level: NM | None = None) -> Tensor:
    """Keep mask of magnitude pruning: the smallest ``|W|`` of the layer, or per N:M group."""
    scores = weight.abs()
    return nm_mask(scores, level) if level is not None else unstructured_mask(scores, count or 0, per_row=False)


def wanda(weight: Tensor, norms: Tensor, *, count: int | None = None, level: NM | None = None) -> Tensor:
    """Keep mask of Wanda: scores ``|W_ij| * ||x_j||`` (``norms``: ``(in,)`` input L2 norms), compared per row."""
    scores = weight.abs() * norms.to(weight.dtype).reshape(1, -1)
    return nm_mask(scores, level) if level is not None else unstructured_mask(scores, count or 0, per_row=True)


def sparsegpt(weight: Tensor, hessian: Tensor, *, count: int | None = None, level: NM | None = None,
              blocksize: int = 128, percdamp: float = 0.01) -> tuple[Tensor, Tensor]:
    """SparseGPT on ``weight`` ``(out, in)`` with the input Hessian ``hessian`` ``(in, in)`` (``X^T X``, any scale).

    Returns:
        ``(new_weight, keep)``: the reconstructed weight (zeros where pruned) and its keep mask.
    """
    W = weight.detach().clone().float()  # (out, in)
    rows, cols = W.shape
    if level is not None and not level.dense and cols % level.group:
        raise ConfigError(f"a layer with {cols} inputs cannot take {level} sparsity ({cols} is no multiple of "
                          f"{level.group}): use per-layer levels and leave it dense, or another M")
    if level is not None and blocksize % level.group:
        raise ConfigError(f"blocksize {blocksize} must be a multiple of the N:M group {level.group}")
    H = hessian.detach().clone().float().to(W.device)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1  # an input never active: its weights are free (kept as they are, unlike the reference's 0)
    damp = percdamp * torch.mean(torch.diag(H))
    idx = torch.arange(cols, device=W.device)
    H[idx, idx] += damp
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    keep = torch.ones_like(W, dtype=torch.bool)
    starts = list(range(0, cols, blocksize))
    sizes = [min(blocksize, cols - i) * rows for i in starts]
    counts = split_count(count or 0, sizes) if level is None else [0] * len(starts)
    for i1, block_count in zip(starts, counts):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        diag1 = torch.diag(Hinv1)
        prune1 = torch.zeros_like(W1, dtype=torch.bool)
        if level is None:
            prune1 = ~_smallest(W1 ** 2 / diag1.reshape(1, -1) ** 2, block_count)
        for i in range(i2 - i1):
            if level is not None and not level.dense and i % level.group == 0:
                scores = W1[:, i:i + level.group] ** 2 / diag1[i:i + level.group].reshape(1, -1) ** 2
                prune1[:, i:i + level.group] = ~nm_mask(scores, level)
            w = W1[:, i]
            d = Hinv1[i, i]
            q = w.clone()
            q[prune1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        keep[:, i1:i2] = ~prune1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    W[~keep] = 0
    return W.to(weight.dtype), keep
