"""One probing forward pass: FLOPs each module computes itself, and channel shuffles.

Layer discovery needs to know what the cost model cannot see from parameter shapes alone:

- FLOPs a module computes in its own ``forward`` rather than in a child Conv2d/Linear (the matmuls of
  attention, or any ``x @ y`` between activations), as ``FlopCounterMode`` counts them. Each op is charged
  to the innermost module running it, found with the probe's own forward hooks (``FlopCounterMode``'s
  module names go wrong when a container such as a ``ModuleList`` is iterated rather than called: Hugging
  Face's ``ResNetStage`` then seemed to compute its layers' FLOPs itself). Ops none of whose inputs derive
  from the model input (a rotary embedding's angles) are counted apart: pruning cannot change them;
- a channel shuffle (``view(B, g, C/g, ...)`` then ``transpose(1, 2)``), through which Torch-Pruning
  maps channel indices as if nothing moved, so pruning would remove the wrong channels.

On CPU ``F.scaled_dot_product_attention`` runs ``aten._scaled_dot_product_flash_attention_for_cpu``, which
``FlopCounterMode`` (PyTorch 2.13) leaves out; the probe counts it with PyTorch's own attention formula
(``sdpa_flop_count``), and :func:`counting_flops` is the counter that measures a model the same way.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from amc.graph.attention import AttentionParts
from amc.graph.attention import attention_parts as _attention_parts
from amc.graph.groups import module_type

_WEIGHTED = ("conv", "depthwise", "grouped", "linear", "mha")


@dataclass(frozen=True)
class Probe:
    """What one forward pass showed.

    Attributes:
        own_flops: Per module (per sample), FLOPs of its ``forward`` outside its children that derive from
            the model input.
        shuffle: ``(module name, type name)`` of the first channel shuffle, or ``None``.
        constant_flops: FLOPs (per sample) of ops outside conv/linear layers none of whose inputs derive
            from the model input (rotary angles from positions, masks): the same whatever is pruned.
    """

    own_flops: dict[nn.Module, int]
    shuffle: tuple[str, str] | None
    constant_flops: int = 0


def attention_parts(module: nn.Module) -> AttentionParts | None:
    """The parts of a timm-style attention module (``num_heads``, fused ``qkv``, ``proj``), else None (every
    recognised layout: :func:`amc.graph.attention.attention_parts`)."""
    parts = _attention_parts(module)
    return parts if parts is not None and parts.fused else None


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


class _OwnFlops(FlopCounterMode):
    """``FlopCounterMode`` that charges each op to the innermost module running it (the ``stack`` the probe's
    hooks keep), and apart when no input of the op derives from the model input (a constant, such as a
    rotary embedding's angles, whatever the model's widths)."""

    def __init__(self, stack: list[nn.Module], example: Tensor) -> None:
        super().__init__(display=False, custom_mapping=SDPA_CPU)
        self.stack = stack
        self.own: dict[nn.Module, int] = {}
        self.constant = 0
        self.tainted: dict[int, weakref.ref] = {id(example): weakref.ref(example)}  # id -> the tensor, weakly

    def _count_flops(self, func_packet, out, args, kwargs):
        inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        derived = any((ref := self.tainted.get(id(t))) is not None and ref() is t for t in inputs)
        if derived:
            for t in pytree.tree_leaves(out):
                if isinstance(t, Tensor):
                    self.tainted[id(t)] = weakref.ref(t)
        if func_packet in self.flop_registry:
            flops = self.flop_registry[func_packet](*args, **kwargs, out_val=out)
            module = self.stack[-1] if self.stack else None
            if derived or module_type(module) in _WEIGHTED:
                self.own[module] = self.own.get(module, 0) + flops
            else:
                self.constant += flops
        return out


def probe(model: nn.Module, example: Tensor) -> Probe:
    """Runs ``model(example)`` once (no grad) counting each module's own FLOPs, and the shuffle watch."""
    names = {module: name for name, module in model.named_modules()}
    modules: list[nn.Module] = []
    handles = []

    def enter(module: nn.Module, args: tuple) -> None:
        modules.append(module)

    def leave(module: nn.Module, args: tuple, output: object) -> None:
        if modules and modules[-1] is module:
            modules.pop()

    for module in model.modules():
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    stack = _Names(modules, names)
    watch = _ShuffleWatch(stack)
    counter = _OwnFlops(modules, example)
    try:
        with torch.no_grad(), counter, watch:
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    batch = example.shape[0]
    own = {(model if module is None else module): flops // batch for module, flops in counter.own.items() if flops}
    shuffle = None
    if watch.found is not None:
        module = model.get_submodule(watch.found) if watch.found else model
        shuffle = (watch.found, type(module).__name__)
    return Probe(own, shuffle, counter.constant // batch)


class _Names:
    """The names of the modules on the probe's stack, read as the shuffle watch reads a list of names."""

    def __init__(self, modules: list[nn.Module], names: dict) -> None:
        self.modules, self.names = modules, names

    def __bool__(self) -> bool:
        return bool(self.modules)

    def __getitem__(self, index: int) -> str:
        return self.names.get(self.modules[index], "")


def counting_flops() -> FlopCounterMode:
    """``FlopCounterMode`` as the cost model counts: with ``F.scaled_dot_product_attention`` on CPU counted
    (PyTorch counts its CUDA kernels, not ``aten._scaled_dot_product_flash_attention_for_cpu``)."""
    return FlopCounterMode(display=False, custom_mapping=SDPA_CPU)


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _native_mha_flops(query_shape, key_shape, value_shape, embed_dim, num_head, *args, out_shape=None, **kwargs) -> int:
    """``nn.MultiheadAttention``'s fast path (eval, no grad): the q/k/v and output projections and the two
    attention matmuls, as its slow path's ``linear`` and attention ops count them."""
    *lead, length, _ = query_shape
    source = key_shape[-2]
    batch = math.prod(lead)
    projections = 2 * batch * embed_dim * embed_dim * (2 * length + 2 * source)
    return projections + 4 * batch * length * source * embed_dim


SDPA_CPU = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
            torch.ops.aten._native_multi_head_attention: _native_mha_flops}
