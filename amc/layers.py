"""Layer discovery: one pruning decision per group of channel-coupled layers.

Torch-Pruning's dependency graph tells which modules lose channels together when one layer's output
channels are removed (residual additions, concatenations, depthwise convs, flatten). Each such group
is one decision, a :class:`LayerSpec`. For every parameterised module the discovery also records, per
decision, how many of the module's input/output channels go with one channel of the decision (1 for
a plain connection, ``h*w`` through a flatten). The analytic cost models in :mod:`amc.cost` use these
records, so a predicted cost equals the pruned model's measured cost exactly.

Not decisions: the classifier's output layer, grouped convolutions (``1 < groups < in_channels``,
which Torch-Pruning cannot shrink consistently), and any group that touches a parameterised module
other than a conv, linear or batch norm. Those layers keep their width.
"""

from __future__ import annotations

import hashlib
import logging
import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from amc.errors import ConfigError, UnsupportedModelError

log = logging.getLogger(__name__)

_BN = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class LayerSpec:
    """One agent decision: the output channels of a group of coupled layers.

    Attributes:
        name: Qualified module name of the group's leading layer, e.g. ``"layers.3.conv1"``.
        kind: ``"conv"``, ``"linear"`` or ``"depthwise"`` (the group contains a depthwise conv).
        in_channels, out_channels, kernel, stride, groups: The leading layer's shape.
        in_hw, out_hw: The leading layer's input and output spatial size ((1, 1) for linear).
        flops: FLOPs (per sample, as FlopCounterMode counts them) of the layers whose output
            channels this decision removes, in the base model.
        params: Parameters of those layers, in the base model.
        members: Every conv/linear/batch-norm module whose output channels this decision removes.
    """

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    flops: int
    params: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class ModuleRecord:
    """A parameterised module and how its channel counts depend on the decisions.

    ``out_deps``/``in_deps`` hold ``(decision index, channels per decision channel)``. For a conv,
    FLOPs are ``2 * positions * out * in_per_group * kernel_numel``; ``in_per_group`` is the input
    channels divided by groups (1 for a depthwise conv, whose inputs follow its outputs).
    """

    name: str
    type: str  # "conv" | "depthwise" | "linear" | "bn"
    out_channels: int
    in_channels: int  # per group
    kernel_numel: int
    positions: int  # output positions per sample and channel (h*w for a conv)
    has_bias: bool
    out_deps: tuple[tuple[int, int], ...]
    in_deps: tuple[tuple[int, int], ...]

    @property
    def base_flops(self) -> int:
        if self.type == "bn":
            return 0
        return 2 * self.positions * self.out_channels * self.in_channels * self.kernel_numel

    @property
    def weight_numel(self) -> int:
        if self.type == "bn":
            return 0
        return self.out_channels * self.in_channels * self.kernel_numel


@dataclass(frozen=True)
class LayerGraph:
    """What :func:`discover` finds: the decisions, the module records and the model's fingerprint."""

    layers: tuple[LayerSpec, ...]
    modules: tuple[ModuleRecord, ...]
    fingerprint: str
    input_shape: tuple[int, ...]  # (C, H, W) of one sample
    round_to: int
    total_params: int
    other_params: int  # parameters of modules that no record describes (never pruned)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerSpec]:
        return iter(self.layers)

    def __getitem__(self, index: int) -> LayerSpec:
        return self.layers[index]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.layers)

    def channels(self, keep: Sequence[float]) -> tuple[int, ...]:
        """Channel counts that keep ratios give under this graph's rounding rule."""
        if len(keep) != len(self.layers):
            raise ConfigError(f"expected {len(self.layers)} keep ratios (one per layer), got {len(keep)}")
        return tuple(
            channels_for(k, spec.out_channels, self.round_to, name=spec.name) for k, spec in zip(keep, self.layers)
        )


def channels_for(keep: float, out_channels: int, round_to: int = 1, *, name: str = "layer") -> int:
    """The one channel-rounding rule: ``max(round_to, round_up(keep * n, round_to))``, capped at n.

    Shared by the cost models, the pruner and the exported policy, so a policy's reported cost is the
    cost of the model it produces. Never returns 0.

    Raises:
        ConfigError: ``keep`` is not in (0, 1].
    """
    if isinstance(keep, bool) or not isinstance(keep, numbers.Real) or math.isnan(keep) or not 0.0 < keep <= 1.0:
        raise ConfigError(f"keep ratio of {name!r} must be a number in (0, 1], got {keep!r}")
    keep = float(keep)
    if round_to < 1:
        raise ConfigError(f"round_to must be a positive integer, got {round_to!r}")
    # The epsilon stops 0.3 * 10 = 3.0000000000000004 from rounding up to 4.
    wanted = math.ceil(keep * out_channels / round_to - 1e-9) * round_to
    return min(out_channels, max(round_to, wanted))


def fingerprint(model: nn.Module) -> str:
    """A hash of the architecture (module names and types) and every parameter's and buffer's shape."""
    h = hashlib.sha256()
    for name, module in model.named_modules():
        h.update(f"m:{name}:{type(module).__name__};".encode())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        h.update(f"t:{name}:{tuple(tensor.shape)};".encode())
    return h.hexdigest()[:16]


def _module_type(module: nn.Module) -> str | None:
    if isinstance(module, nn.Conv2d):
        if module.groups == 1:
            return "conv"
        if module.groups == module.in_channels == module.out_channels:
            return "depthwise"
        return "grouped"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, _BN):
        return "bn"
    return None


def _forward_shapes(model: nn.Module, example: torch.Tensor) -> tuple[list[nn.Module], dict[nn.Module, tuple]]:
    """Runs one forward pass; returns modules in call order and each leaf's (input, output) shapes."""
    order: list[nn.Module] = []
    shapes: dict[nn.Module, tuple] = {}

    calls: dict[nn.Module, int] = {}

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        calls[module] = calls.get(module, 0) + 1
        if module not in shapes:
            order.append(module)
            shapes[module] = (tuple(args[0].shape), tuple(output.shape))

    handles = [m.register_forward_hook(hook) for m in model.modules() if _module_type(m) is not None]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    reused = [type(m).__name__ for m, n in calls.items() if n > 1]
    if reused:
        raise UnsupportedModelError(
            f"the model calls {reused} more than once per forward pass; shared layers cannot be pruned or "
            "costed exactly: give each use its own module"
        )
    return order, shapes


def discover(model: nn.Module, example_input: torch.Tensor, *, round_to: int = 1) -> LayerGraph:
    """Finds the prunable decisions of ``model`` in forward order.

    Args:
        model: The base model (left unchanged; it is put in eval mode for tracing).
        example_input: One batch shaped like the model's input, e.g. ``(1, C, H, W)``.
        round_to: Channel counts are rounded up to a multiple of this (AMC uses 8).

    Returns:
        A :class:`LayerGraph`.

    Raises:
        UnsupportedModelError: The model has no prunable layer, or a layer type the cost model
            cannot count exactly sits in a prunable group.
    """
    if round_to < 1:
        raise ConfigError(f"round_to must be a positive integer, got {round_to!r}")
    was_training = model.training
    model.eval()
    try:
        order, shapes = _forward_shapes(model, example_input)
        dg = tp.DependencyGraph().build_dependency(model, example_input, verbose=False)
    finally:
        model.train(was_training)
    names = {module: name for name, module in model.named_modules()}
    types = {module: _module_type(module) for module in order}

    output_modules = {m for m in order if _feeds_output(dg, m)}
    covered: set[nn.Module] = set()
    groups: list[tuple[nn.Module, dict[tuple[nn.Module, bool], int]]] = []
    for root in order:
        if types[root] not in ("conv", "linear", "depthwise") or root in covered:
            continue
        n_out = root.out_channels if types[root] != "linear" else root.out_features
        pruner = dg.get_pruner_of_module(root)
        group = dg.get_pruning_group(root, pruner.prune_out_channels, list(range(n_out)))
        counts: dict[tuple[nn.Module, bool], int] = {}
        for item in group:
            target = item.dep.target.module
            if not any(True for _ in target.parameters(recurse=False)):
                continue  # element-wise ops, concat, reshape: no parameters, no cost of their own
            is_out = dg.is_out_channel_pruning_fn(item.dep.handler)
            key = (target, is_out)
            counts[key] = max(counts.get(key, 0), len(item.idxs))
        covered.update(m for (m, is_out) in counts if is_out)
        problem = _group_problem(counts, types, output_modules, names)
        if problem:
            log.debug("layer %s is not prunable: %s", names[root], problem)
            continue
        groups.append((root, {k: v // n_out for k, v in counts.items()}))

    if not groups:
        raise UnsupportedModelError(
            f"found no prunable layer in {type(model).__name__}: it needs a Conv2d or Linear layer whose "
            "output channels do not feed the model output directly"
        )
    return _build_graph(model, example_input, order, shapes, types, names, groups, round_to)


def _feeds_output(dg, module: nn.Module) -> bool:
    """True when ``module``'s output channels reach the model output without a channel-mixing layer.

    Follows the graph through parameter-free ops (softmax, flatten, pooling, add) and channel-wise layers
    (batch norm, depthwise conv), so ``fc -> log_softmax`` still marks ``fc`` as the classifier.
    """
    stack, seen = [dg.module2node[module]], set()
    while stack:
        node = stack.pop()
        if not node.outputs:
            return True
        for nxt in node.outputs:
            if id(nxt) in seen:
                continue
            seen.add(id(nxt))
            if _module_type(nxt.module) in ("conv", "linear", "grouped"):
                continue  # a channel-mixing layer consumes these channels: the output is its business
            stack.append(nxt)
    return False


def _group_problem(counts: dict, types: dict, output_modules: set, names: dict) -> str | None:
    for (module, is_out) in counts:
        kind = types.get(module) or _module_type(module)
        if kind is None:
            return f"it touches {type(module).__name__} {names.get(module)!r}, whose cost is not modelled"
        if kind == "grouped":
            return f"it touches the grouped conv {names.get(module)!r}"
        if is_out and module in output_modules:
            return f"it removes outputs of {names.get(module)!r}, which produces the model output"
    return None


def _build_graph(model, example, order, shapes, types, names, groups, round_to) -> LayerGraph:
    out_deps: dict[nn.Module, list[tuple[int, int]]] = {m: [] for m in order}
    in_deps: dict[nn.Module, list[tuple[int, int]]] = {m: [] for m in order}
    for index, (_, counts) in enumerate(groups):
        for (module, is_out), per_channel in counts.items():
            if types[module] == "depthwise" and not is_out:
                continue  # a depthwise conv's inputs follow its outputs; counted once, as outputs
            (out_deps if is_out else in_deps)[module].append((index, per_channel))

    records: list[ModuleRecord] = []
    for module in order:
        kind = types[module]
        in_shape, out_shape = shapes[module]
        batch = out_shape[0]
        if kind == "bn":
            rec = ModuleRecord(names[module], "bn", module.num_features, 0, 0, 0, module.affine,
                               tuple(out_deps[module]), ())
        elif kind == "linear":
            positions = math.prod(out_shape) // (batch * module.out_features)
            rec = ModuleRecord(names[module], "linear", module.out_features, module.in_features, 1, positions,
                               module.bias is not None, tuple(out_deps[module]), tuple(in_deps[module]))
        else:
            positions = math.prod(out_shape[2:])
            rec = ModuleRecord(names[module], kind if kind != "grouped" else "conv", module.out_channels,
                               module.in_channels // module.groups, math.prod(module.kernel_size), positions,
                               module.bias is not None, tuple(out_deps[module]), tuple(in_deps[module]))
        records.append(rec)

    by_name = {r.name: r for r in records}
    specs = []
    for index, (root, counts) in enumerate(groups):
        members = tuple(names[m] for m in order if (m, True) in counts)
        member_recs = [by_name[n] for n in members]
        in_shape, out_shape = shapes[root]
        is_linear = types[root] == "linear"
        specs.append(LayerSpec(
            name=names[root],
            kind="depthwise" if any(r.type == "depthwise" for r in member_recs) else types[root],
            in_channels=root.in_features if is_linear else root.in_channels,
            out_channels=root.out_features if is_linear else root.out_channels,
            kernel=1 if is_linear else root.kernel_size[0],
            stride=1 if is_linear else root.stride[0],
            groups=1 if is_linear else root.groups,
            in_hw=(1, 1) if is_linear else tuple(in_shape[2:4]),
            out_hw=(1, 1) if is_linear else tuple(out_shape[2:4]),
            flops=sum(r.base_flops for r in member_recs),
            params=sum(_record_params(r) for r in member_recs),
            members=members,
        ))
    total = sum(p.numel() for p in model.parameters())
    modelled = sum(_record_params(r) for r in records)
    return LayerGraph(
        layers=tuple(specs),
        modules=tuple(records),
        fingerprint=fingerprint(model),
        input_shape=tuple(example.shape[1:]),
        round_to=round_to,
        total_params=total,
        other_params=total - modelled,
    )


def _record_params(rec: ModuleRecord) -> int:
    if rec.type == "bn":
        return 2 * rec.out_channels if rec.has_bias else 0  # affine weight and bias; stats are buffers
    return rec.weight_numel + (rec.out_channels if rec.has_bias else 0)
