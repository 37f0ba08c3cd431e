"""Removable blocks: submodules wrapped by an identity skip, which depth pruning replaces by the identity.

A block is removable when its output is its input plus what it computes, ``x + f(x)`` (a chain such as a
transformer block's ``x + attn(x) + mlp(...)`` too), or an element-wise activation of that (the post-activation
``relu(x + f(x))`` of a ResNet basic block). It is found from one traced forward pass, not from class names:
each module's input tensor is followed through the ops of its own ``forward``; an addition with an operand
on that stream continues it, and so does an activation of it. A module is a block when its output is on its
input's stream, it adds to the stream in its own ``forward`` (so a ``Sequential`` of blocks is not one block
itself), it keeps its input's shape, it runs a Conv2d or Linear layer and it is called once, with one tensor.
A downsampling block (a projection on the skip), a MobileNetV2 inverted residual without its skip and a
model without residuals have none.

Dropping a block removes its layers from the cost: which layer records of the
:class:`~amc.graph.records.LayerGraph` lie inside it, the width decisions that become irrelevant with it (all
their records inside), and the FLOPs and parameters of the block that no record describes (constant).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from amc.errors import ConfigError
from amc.graph.discover import discover
from amc.graph.groups import module_type
from amc.graph.probe import counting_flops
from amc.graph.records import LayerGraph

log = logging.getLogger(__name__)

KINDS = ("residual", "activated")
_ADDS = frozenset({"add", "add_", "__add__", "__radd__", "__iadd__"})
# Element-wise activations that may follow the addition (post-activation residual blocks).
_ACTIVATIONS = frozenset({"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "gelu", "silu", "silu_",
                          "leaky_relu", "leaky_relu_", "elu", "elu_", "hardswish", "mish"})
_WEIGHTED = ("conv", "depthwise", "grouped", "linear", "mha")


@dataclass(frozen=True)
class Block:
    """A submodule that can be replaced by the identity: its output is ``x + f(x)`` (or ``act(x + f(x))``).

    Attributes:
        name: Qualified module name, e.g. ``"layers.1"``.
        type: Its class name, e.g. ``"BasicBlock"``.
        kind: ``"residual"`` (output ``x + f(x)``) or ``"activated"`` (``act(x + f(x))``).
        decisions: Names of the width decisions all of whose layers lie inside: irrelevant once it is dropped.
        records: Names of the layer records (modules, attention matmuls, bare parameters) inside it: what
            dropping it takes out of the cost.
        flops: FLOPs per sample the block computes in the base model (as ``FlopCounterMode`` counts).
        params: Parameters of the block in the base model.
        other_flops: Of ``flops``, those no record describes (constant whatever the widths).
        other_params: Of ``params``, those no record describes (never pruned).
    """

    name: str
    type: str
    kind: str
    decisions: tuple[str, ...]
    records: tuple[str, ...]
    flops: int
    params: int
    other_flops: int = 0
    other_params: int = 0

    def contains(self, name: str) -> bool:
        """Whether the module or parameter ``name`` lies inside this block."""
        return name == self.name or name.startswith(self.name + ".")


def no_blocks_message(model: str) -> str:
    """The one-line message for ``--depth`` on a model without a removable block."""
    return f"model {model} has no removable block (an identity skip around a block); run without --depth"


def require_blocks(blocks: list[Block], model: str) -> list[Block]:
    """``blocks``, or a one-line :class:`~amc.errors.ConfigError` when there is none (``--depth`` asked for)."""
    if not blocks:
        raise ConfigError(no_blocks_message(model))
    return blocks


def records_alive(graph: LayerGraph, blocks: list[Block] | tuple[Block, ...]) -> list[float]:
    """Per layer record of ``graph``: 0.0 when it lies inside one of ``blocks`` (gone with it), else 1.0."""
    return [0.0 if any(b.contains(r.name) for b in blocks) else 1.0 for r in graph.modules]


@dataclass
class _Frame:
    """One module's forward in progress: the tensors on its input's stream."""

    module: nn.Module
    input: Tensor | None
    flops_at_entry: int
    stream: dict[int, tuple[Tensor, str]] = field(default_factory=dict)  # id -> (tensor kept alive, kind)
    own_add: bool = False
    weighted: bool = False


class _StreamWatch(TorchFunctionMode):
    """Follows each active module's input through additions and activations (the probe's module stack)."""

    def __init__(self, frames: list[_Frame]) -> None:
        super().__init__()
        self.frames = frames

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if not self.frames or not isinstance(out, Tensor) or not (name in _ADDS or name in _ACTIVATIONS):
            return out
        operands = [a for a in args[:2 if name in _ADDS else 1] if isinstance(a, Tensor)]
        for frame in self.frames:
            if any(id(t) in frame.stream and frame.stream[id(t)][0] is t for t in operands):
                frame.stream[id(out)] = (out, "residual" if name in _ADDS else "activated")
                if name in _ADDS and frame is self.frames[-1]:
                    frame.own_add = True
        return out


def find_blocks(model: nn.Module, example_input: Tensor, *, graph: LayerGraph | None = None) -> list[Block]:
    """The removable blocks of ``model`` in forward order (outer before inner when they nest).

    Args:
        model: The base model (left unchanged; run once in eval mode).
        example_input: One batch shaped like the model's input; its first sample is used.
        graph: The model's :class:`~amc.graph.records.LayerGraph` (discovered when None).

    Returns:
        One :class:`Block` per removable block; empty when the model has none.
    """
    if graph is None:
        graph = discover(model, example_input[:1])
    found, calls = _trace(model, example_input[:1], counting_flops())
    names = {module: name for name, module in model.named_modules()}
    blocks = [_block(graph, module, names[module], kind, flops) for module, kind, flops in found
              if calls[module] == 1]
    blocks = [b for b in blocks if b is not None]
    order = {name: i for i, name in enumerate(names.values())}
    return sorted(blocks, key=lambda b: order[b.name])


def has_blocks(model: nn.Module, example_input: Tensor) -> bool:
    """Whether ``model`` has a candidate removable block: one traced forward pass, no layer discovery and no
    FLOP counting (a cheap check on an untrained model before its training; :func:`find_blocks` may still
    leave a candidate out when its layer records do not add up)."""
    found, calls = _trace(model, example_input[:1], None)
    return any(calls[module] == 1 for module, _, _ in found)


def _trace(model: nn.Module, example: Tensor, counter) -> tuple[list[tuple[nn.Module, str, int]], dict[nn.Module, int]]:
    """The modules whose output is on their input's stream (module, kind, FLOPs inside when ``counter``
    counts), in the order they finish, and how often each module was called."""
    frames: list[_Frame] = []
    found: list[tuple[nn.Module, str, int]] = []
    calls: dict[nn.Module, int] = {}

    def flops() -> int:
        return counter.get_total_flops() if counter is not None else 0

    def enter(module: nn.Module, args: tuple, kwargs: dict) -> None:
        calls[module] = calls.get(module, 0) + 1
        single = len(args) == 1 and not kwargs and isinstance(args[0], Tensor)
        frame = _Frame(module, args[0] if single else None, flops())
        if single:
            frame.stream[id(args[0])] = (args[0], "input")
        if module_type(module) in _WEIGHTED:
            for outer in frames:
                outer.weighted = True
        frames.append(frame)

    def leave(module: nn.Module, args: tuple, output: object) -> None:
        if not frames or frames[-1].module is not module:
            return
        frame = frames.pop()
        x = frame.input
        if x is None or not isinstance(output, Tensor) or output is x or module is model:
            return
        on_stream = frame.stream.get(id(output))
        if on_stream is None or on_stream[0] is not output or not frame.own_add or not frame.weighted:
            return
        if output.shape != x.shape:
            return
        found.append((module, on_stream[1], flops() - frame.flops_at_entry))

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(enter, with_kwargs=True))
        handles.append(module.register_forward_hook(leave))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter if counter is not None else contextlib.nullcontext(), _StreamWatch(frames):
            model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return found, calls


def _block(graph: LayerGraph, module: nn.Module, name: str, kind: str, flops: int) -> Block | None:
    probe = Block(name, type(module).__name__, kind, (), (), 0, 0)
    inside = [r for r in graph.modules if probe.contains(r.name)]
    params = sum(p.numel() for p in module.parameters())
    other_flops = flops - sum(r.base_flops for r in inside)
    other_params = params - sum(r.params for r in inside)
    if other_flops < 0 or other_params < 0:  # records that are not the block's own: its cost would be inexact
        log.debug("block %s left out: its layer records do not add up (%d FLOPs, %d params)", name,
                  other_flops, other_params)
        return None
    names = {r.name for r in inside}
    touched: dict[int, bool] = {}
    for rec in graph.modules:
        for d, _ in (*rec.out_deps, *rec.in_deps):
            touched[d] = touched.get(d, True) and rec.name in names
    decisions = tuple(spec.name for d, spec in enumerate(graph.layers) if touched.get(d, False))
    return Block(name, type(module).__name__, kind, decisions, tuple(r.name for r in inside), flops, params,
                 other_flops, other_params)


__all__ = ["KINDS", "Block", "find_blocks", "has_blocks", "no_blocks_message", "records_alive", "require_blocks"]
