"""One probing forward pass: FLOPs each module computes itself, channel shuffles, attention modules.

Layer discovery needs to know what the cost model cannot see from parameter shapes alone:

- FLOPs a module computes in its own ``forward`` rather than in a child Conv2d/Linear (the matmuls of
  attention, or any ``x @ y`` between activations), as ``FlopCounterMode`` counts them;
- a channel shuffle (``view(B, g, C/g, ...)`` then ``transpose(1, 2)``), through which Torch-Pruning
  maps channel indices as if nothing moved, so pruning would remove the wrong channels;
- attention modules Torch-Pruning can prune by whole heads: a ``num_heads`` attribute, a fused ``qkv``
  Linear (``3 * heads * head_dim`` outputs) and an output ``proj`` Linear (timm's layout).

On CPU ``F.scaled_dot_product_attention`` runs ``aten._scaled_dot_product_flash_attention_for_cpu``,
which ``FlopCounterMode`` (PyTorch 2.13) counts as 0 FLOPs; an attention module that calls it has no
FLOPs of its own for the cost model either, exactly as measured. Write attention as two matmuls (as
:class:`amc.models.vit.Attention` does) to have them counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Probe:
    """What one forward pass showed.

    Attributes:
        own_flops: Per module (per sample), FLOPs of its ``forward`` outside its children.
        shuffle: ``(module name, type name)`` of the first channel shuffle, or ``None``.
    """

    own_flops: dict[nn.Module, int]
    shuffle: tuple[str, str] | None


@dataclass(frozen=True)
class AttentionParts:
    """An attention module Torch-Pruning can prune by whole heads."""

    module: nn.Module
    qkv: nn.Linear
    proj: nn.Linear
    num_heads: int

    @property
    def head_dim(self) -> int:
        return self.proj.in_features // self.num_heads


def attention_parts(module: nn.Module) -> AttentionParts | None:
    """The parts of a timm-style attention module (``num_heads``, fused ``qkv``, ``proj``), else None."""
    heads, qkv, proj = getattr(module, "num_heads", None), getattr(module, "qkv", None), getattr(module, "proj", None)
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        return None
    if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)):
        return None
    if proj.in_features % heads or qkv.out_features != 3 * proj.in_features:
        return None
    return AttentionParts(module, qkv, proj, heads)


class _ShuffleWatch(TorchFunctionMode):
    """Flags ``transpose(1, 2)`` (or a permute swapping dims 1 and 2) of a tensor whose channel dimension
    a ``view``/``reshape`` has just split in two: the channel shuffle of ShuffleNet."""

    def __init__(self, stack: list[str]) -> None:
        super().__init__()
        self.stack = stack
        self.split: dict[int, Tensor] = {}  # id -> tensor (kept alive so ids stay unique)
        self.found: str | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.found is not None or not args or not isinstance(args[0], Tensor):
            return out
        name, x = getattr(func, "__name__", ""), args[0]
        if name in ("view", "reshape") and isinstance(out, Tensor) and x.dim() >= 3 and out.dim() == x.dim() + 1:
            if (out.shape[0] == x.shape[0] and out.shape[1] > 1 and out.shape[2] > 1
                    and out.shape[1] * out.shape[2] == x.shape[1] and out.shape[3:] == x.shape[2:]):
                self.split[id(out)] = out
        elif name in ("transpose", "swapaxes", "swapdims", "permute") and id(x) in self.split:
            dims = args[1:] if name != "permute" or len(args) > 2 else tuple(args[1])
            dims = tuple(d % x.dim() for d in dims)
            swapped = set(dims[:2]) == {1, 2} if name != "permute" else dims[1:3] == (2, 1)
            if swapped:
                self.found = self.stack[-1] if self.stack else ""
        return out


def probe(model: nn.Module, example: Tensor) -> Probe:
    """Runs ``model(example)`` once (no grad) under ``FlopCounterMode`` and the shuffle watch."""
    names = {module: name for name, module in model.named_modules()}
    stack: list[str] = []
    handles = []

    def enter(module: nn.Module, args: tuple) -> None:
        stack.append(names[module])

    def leave(module: nn.Module, args: tuple, output: object) -> None:
        stack.pop()

    for module in model.modules():
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    watch = _ShuffleWatch(stack)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter, watch:
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    root = type(model).__name__
    by_name = dict(model.named_modules())
    total: dict[nn.Module, int] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = "" if key == root else key[len(root) + 1:]
        module = by_name.get(name)
        if module is not None:
            total[module] = sum(ops.values())
    batch = example.shape[0]
    own = {}
    for module, flops in total.items():
        children = sum(total.get(child, 0) for child in module.children())
        if flops - children:
            own[module] = (flops - children) // batch
    shuffle = None
    if watch.found is not None:
        module = model.get_submodule(watch.found) if watch.found else model
        shuffle = (watch.found, type(module).__name__)
    return Probe(own, shuffle)
