"""Tensors a model caches outside its parameters and buffers (timm's EfficientFormer and LeViT keep attention
biases per device in a dict): a grad-enabled trace (Torch-Pruning's) leaves them non-leaf, which
``copy.deepcopy`` refuses ("Only Tensors created explicitly by the user (graph leaves) support the deepcopy
protocol"), and after pruning they would hold the old widths. :func:`release_caches` drops them.
"""

from __future__ import annotations

from torch import Tensor, nn

_MODULE_SLOTS = ("_parameters", "_buffers", "_modules")


def release_caches(model: nn.Module) -> int:
    """Empties every dict of tensors held as a plain module attribute (a cache the module refills on its next
    forward) and detaches every non-leaf tensor held as one; returns how many it changed."""
    changed = 0
    for module in model.modules():
        for name, value in list(vars(module).items()):
            if name in _MODULE_SLOTS:
                continue
            if isinstance(value, dict) and value and all(isinstance(v, Tensor) for v in value.values()):
                value.clear()  # the module's own dict object: it keeps filling the same one
                changed += 1
            elif isinstance(value, Tensor) and value.grad_fn is not None:
                setattr(module, name, value.detach())
                changed += 1
    return changed
