"""Input statistics of every prunable layer from calibration tokens: what Wanda and SparseGPT need.

One pass of the dense model over the calibration batches, with a forward hook on every prunable layer: each
layer sees the dense model's activations (Wanda's and OWL's statistics; SparseGPT's reference instead runs
block by block, feeding each block the outputs of the already pruned blocks before it). Computed once, the
statistics serve every candidate of a search: a candidate's masks then depend only on its sparsities.

- ``norms``: ``||x_j||_2`` of each input feature ``j`` over all calibration tokens (Wanda's activation norm).
- ``hessian``: ``X^T X / tokens`` (``(in, in)``, SparseGPT's layer Hessian up to a factor that does not change
  its result), collected only when asked for: it needs ``in^2`` floats per layer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from amc.errors import DataError
from amc.sparsity.layers import SparsityLayout


@dataclass(frozen=True)
class LayerStats:
    """Calibration statistics of one layer's input.

    Attributes:
        norms: ``(in,)`` L2 norm of each input feature over the calibration tokens.
        hessian: ``(in, in)`` ``X^T X / tokens``, or None when not collected.
        tokens: The number of token positions seen.
    """

    norms: Tensor
    hessian: Tensor | None
    tokens: int


def lm_forward(model: nn.Module) -> Callable[[Tensor], object]:
    """``model(ids)``, with ``use_cache=False`` where the forward takes it (no key/value cache to build)."""
    try:
        takes_cache = "use_cache" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        takes_cache = False
    if takes_cache:
        return lambda ids: model(ids, use_cache=False)
    return model


def calibrate(model: nn.Module, layout: SparsityLayout, batches: Iterable[Tensor], *, hessian: bool = False,
              forward: Callable[[Tensor], object] | None = None) -> dict[str, LayerStats]:
    """Statistics of every layer of ``layout`` from one pass of ``model`` over ``batches``.

    Args:
        model: The dense model (unchanged; run in eval mode without gradients).
        layout: Its prunable layers (:func:`~amc.sparsity.layers.discover_sparse`).
        batches: Token id batches ``(B, T)`` int64.
        hessian: Also collect ``X^T X`` (SparseGPT).
        forward: How to run a batch (default :func:`lm_forward`).

    Raises:
        DataError: A batch is not a 2-D integer tensor, or there is no batch.
    """
    modules = dict(model.named_modules())
    device = next(model.parameters()).device
    sums: dict[str, Tensor] = {}
    grams: dict[str, Tensor] = {}
    tokens: dict[str, int] = {}

    def hook(name: str):
        def collect(_module: nn.Module, inputs: tuple, _output: object) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()  # (tokens, in)
            sums[name] = sums[name] + (x * x).sum(0) if name in sums else (x * x).sum(0)
            tokens[name] = tokens.get(name, 0) + x.shape[0]
            if hessian:
                grams[name] = grams[name] + x.t() @ x if name in grams else x.t() @ x
        return collect

    run = forward or lm_forward(model)
    handles = [modules[x.name].register_forward_hook(hook(x.name)) for x in layout.layers]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                if not isinstance(batch, Tensor) or batch.dim() != 2 or batch.dtype.is_floating_point:
                    raise DataError(f"calibration batches are token ids (B, T) of an integer dtype, got "
                                    f"{getattr(batch, 'shape', type(batch))} {getattr(batch, 'dtype', '')}")
                run(batch.to(device))
                seen += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not seen:
        raise DataError("no calibration batch: pass at least one (B, T) batch of token ids")
    missing = [x.name for x in layout.layers if x.name not in sums]
    if missing:
        raise DataError(f"the calibration pass never ran layers {missing[:4]}: pass batches that run the whole model")
    return {x.name: LayerStats(sums[x.name].sqrt(), grams[x.name] / tokens[x.name] if hessian else None,
                               tokens[x.name]) for x in layout.layers}
