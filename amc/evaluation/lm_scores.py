"""Scores of a (pruned) language model: held-out perplexity, and KL divergence to the dense model.

A model here is any module whose ``forward(ids (B, T))`` returns next-token logits ``(B, T, V)``: the
built-in ``tiny-lm`` (:mod:`amc.models.lm`) or a Hugging Face causal LM
(:class:`amc.models.hf_causal.CausalLMLogits`). Windows are int64 ids ``(N, T)``
(:meth:`amc.data.lm_tokens.TokenSplit.windows`).

- :func:`perplexity`: ``exp`` of the mean next-token negative log-likelihood, position ``t``'s logits
  scored against token ``t + 1`` within each window (``N * (T - 1)`` predictions), as
  ``transformers``' ``labels=input_ids`` loss computes it. What every result reports, on held-out windows.
- :func:`kl_to_dense`: the mean over every position of the calibration windows of
  ``KL(p_dense || p_pruned)`` of the next-token distributions, EvoPress's search score (Sieberling et al.
  2024, "EvoPress: Towards Optimal Dynamic Model Compression via Evolutionary Search"). It needs no labels
  and compares whole distributions, so it ranks candidates with fewer tokens than perplexity does. The dense
  model's log-probabilities are computed once (:meth:`DenseReference.compute`) and reused for every
  candidate.

Both run under ``torch.no_grad`` in eval mode on the model's device (the windows are moved there a batch at a
time) and put the model's training flag back.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amc.device import model_device
from amc.errors import ConfigError

DEFAULT_BATCH = 16


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[torch.device]:
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model_device(model)
    finally:
        model.train(training)


def _check(windows: Tensor, batch_size: int) -> None:
    if windows.dim() != 2 or windows.is_floating_point() or windows.shape[0] == 0:
        raise ConfigError(f"windows must be int64 token ids (N, T) with N >= 1, got {windows.dtype} "
                          f"{tuple(windows.shape)}; use TokenSplit.windows(T)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be a positive integer (windows per forward pass)")


def next_token_nll(model: nn.Module, windows: Tensor, *, batch_size: int = DEFAULT_BATCH) -> float:
    """Mean negative log-likelihood (nats) of token ``t + 1`` given tokens ``<= t``, over every window.

    Raises:
        ConfigError: ``windows`` is not ``(N, T)`` int64 ids with ``T >= 2``, or a bad ``batch_size``.
    """
    _check(windows, batch_size)
    if windows.shape[1] < 2:
        raise ConfigError(f"windows of {windows.shape[1]} token predict nothing; use T >= 2")
    total, count = 0.0, 0
    with _evaluating(model) as device:
        for ids in windows.split(batch_size):
            ids = ids.to(device)
            logits = model(ids)[:, :-1]  # (B, T-1, V): position t predicts token t + 1
            total += F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum").item()
            count += ids[:, 1:].numel()
    return total / count


def perplexity(model: nn.Module, windows: Tensor, *, batch_size: int = DEFAULT_BATCH) -> float:
    """``exp(next_token_nll(model, windows))``: the held-out perplexity (lower is better)."""
    return math.exp(next_token_nll(model, windows, batch_size=batch_size))


@dataclass(frozen=True, eq=False)
class DenseReference:
    """The dense model's next-token log-probabilities on the calibration windows, computed once.

    Attributes:
        windows: ``(N, T)`` int64 ids, on the CPU.
        log_probs: ``(N, T, V)`` log-softmax of the dense model's logits, on the CPU, in ``dtype``.
    """

    windows: Tensor
    log_probs: Tensor

    @classmethod
    def compute(cls, dense: nn.Module, windows: Tensor, *, batch_size: int = DEFAULT_BATCH,
                dtype: torch.dtype = torch.float32, max_bytes: int = 2**31) -> DenseReference:
        """Runs ``dense`` once on ``windows`` and keeps its log-probabilities.

        Args:
            dense: The unpruned model.
            windows: Calibration ids ``(N, T)``.
            batch_size: Windows per forward pass.
            dtype: Storage type of the log-probabilities (``torch.float16`` halves the memory of a large
                vocabulary and keeps the KL within ~1%; ``bfloat16``'s 8-bit mantissa is too coarse for the
                small KLs of mildly pruned models; the KL is computed in float32 either way).
            max_bytes: Refuse to hold more than this (``N * T * V`` times the dtype's size).

        Raises:
            ConfigError: Bad windows, or log-probabilities larger than ``max_bytes``.
        """
        _check(windows, batch_size)
        parts: list[Tensor] = []
        with _evaluating(dense) as device:
            for ids in windows.split(batch_size):
                logp = F.log_softmax(dense(ids.to(device)).float(), dim=-1)  # (B, T, V)
                if not parts:
                    size = windows.numel() * logp.shape[-1] * torch.empty((), dtype=dtype).element_size()
                    if size > max_bytes:
                        raise ConfigError(f"the dense log-probabilities of {tuple(windows.shape)} windows over "
                                          f"{logp.shape[-1]} ids take {size / 2**20:.0f} MiB, over max_bytes="
                                          f"{max_bytes}: use fewer calibration windows, dtype=torch.float16 or a "
                                          "larger max_bytes")
                parts.append(logp.to("cpu", dtype))
        return cls(windows=windows.cpu(), log_probs=torch.cat(parts))


def kl_to_dense(model: nn.Module, reference: DenseReference, *, batch_size: int = DEFAULT_BATCH) -> float:
    """Mean ``KL(p_dense || p_model)`` (nats) of the next-token distributions over every calibration position.

    0 for the dense model itself (up to float rounding); it grows as pruning changes the model's predictions.

    Raises:
        ConfigError: A bad ``batch_size``, or a model whose vocabulary differs from the reference's.
    """
    _check(reference.windows, batch_size)
    total = 0.0
    with _evaluating(model) as device:
        for ids, dense in zip(reference.windows.split(batch_size), reference.log_probs.split(batch_size)):
            logq = F.log_softmax(model(ids.to(device)).float(), dim=-1)  # (B, T, V)
            if logq.shape != dense.shape:
                raise ConfigError(f"the model's logits {tuple(logq.shape)} do not match the dense reference's "
                                  f"{tuple(dense.shape)}; compute the reference with the dense version of this model")
            total += F.kl_div(logq, dense.to(device, torch.float32), log_target=True, reduction="sum").item()
    return total / (reference.windows.shape[0] * reference.windows.shape[1])


__all__ = ["DenseReference", "kl_to_dense", "next_token_nll", "perplexity"]
