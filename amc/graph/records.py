"""What layer discovery produces: decisions (:class:`LayerSpec`), module records and the graph.

Kept apart from the discovery itself (:mod:`amc.graph.discover`, which re-exports these names) so the data
contract reads in one sitting.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import nn

from amc.errors import ConfigError
from amc.graph.widths import channels_for, weights_kept

PATTERNS = ("channel", "head", "group")
_WEIGHTED = ("conv", "depthwise", "linear")


@dataclass(frozen=True)
class LayerSpec:
    """One agent decision: the output channels (or heads) of a group of coupled layers.

    Attributes:
        name: Qualified module name of the group's leading layer, e.g. ``"layers.3.conv1"``; for a head
            decision, the attention module (``"blocks.0.attn"``).
        kind: ``"conv"``, ``"linear"`` or ``"depthwise"`` (the group contains a depthwise conv).
        in_channels, out_channels, kernel, stride, groups: The leading layer's shape. ``out_channels``
            counts the decision's units: channels, heads (``pattern="head"``) or channels per group
            (``pattern="group"``).
        in_hw, out_hw: The leading layer's input and output spatial size ((1, 1) for linear).
        flops: FLOPs (per sample, as FlopCounterMode counts them) of the layers whose output
            channels this decision removes, in the base model.
        params: Parameters of those layers, in the base model.
        members: Every module whose output channels this decision removes.
        unit: Channels of the leading layer per unit: 1, a head's width, or the number of groups.
        pattern: ``"channel"``; ``"head"`` (whole heads of an attention module, as Torch-Pruning
            prunes them with ``prune_num_heads``); ``"group"`` (the same channels of every group of a
            grouped conv or GroupNorm, so every group keeps the same width).
        parameters: Bare parameters (class token, position embedding, layer scale) the decision cuts.
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
    unit: int = 1
    pattern: str = "channel"
    parameters: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModuleRecord:
    """A module (or bare parameter) and how its channel counts depend on the decisions.

    ``out_deps``/``in_deps`` hold ``(decision index, channels per decision unit)``. For a conv, FLOPs
    are ``2 * positions * out * in_per_group * kernel_numel``; ``in_per_group`` is the input channels
    divided by groups (1 for a depthwise conv, whose inputs follow its outputs).

    Types: ``conv``/``depthwise``/``linear`` (weights and FLOPs), ``bn`` and ``norm`` (LayerNorm,
    GroupNorm, InstanceNorm: ``params_per_channel`` affine values per channel, no FLOPs), ``embed`` (an
    ``nn.Embedding`` cut along its embedding dimension: ``params_per_channel`` rows, no FLOPs), ``param`` (a
    bare parameter: ``out_channels`` along the pruned dimension times ``in_channels`` values each),
    ``attention`` (the matmuls of an attention module: ``flops_per_channel`` FLOPs per channel of its
    heads, ``out_channels`` = heads x head width), ``mha`` (an ``nn.MultiheadAttention`` on the channel stream:
    ``kernel_numel`` 4 for its q/k/v and output E x E projections over ``positions`` tokens, and
    ``flops_per_channel`` attention-matmul FLOPs per channel).
    """

    name: str
    type: str  # "conv" | "depthwise" | "linear" | "mha" | "bn" | "norm" | "embed" | "param" | "attention"
    out_channels: int
    in_channels: int  # per group
    kernel_numel: int
    positions: int  # output positions per sample and channel (h*w for a conv)
    has_bias: bool
    out_deps: tuple[tuple[int, int], ...]
    in_deps: tuple[tuple[int, int], ...]
    flops_per_channel: int = 0  # attention only
    params_per_channel: int = 0  # norm and embed only

    @property
    def flops_coef(self) -> int:
        """FLOPs per (output channel x input channel) pair."""
        if self.type in _WEIGHTED or self.type == "mha":
            return 2 * self.positions * self.kernel_numel
        return self.flops_per_channel if self.type == "attention" else 0

    @property
    def flops_linear(self) -> int:
        """FLOPs per output channel that do not scale with the inputs (an ``nn.MultiheadAttention``'s matmuls)."""
        return self.flops_per_channel if self.type == "mha" else 0

    @property
    def weight_coef(self) -> int:
        """Parameters per (output channel x input channel) pair."""
        if self.type in _WEIGHTED or self.type == "mha":
            return self.kernel_numel
        return 1 if self.type == "param" else 0

    @property
    def vector_coef(self) -> int:
        """Parameters per output channel that do not scale with the inputs (biases, affine norms)."""
        if self.type == "bn":
            return 2 * self.has_bias
        if self.type in ("norm", "embed"):
            return self.params_per_channel
        if self.type == "mha":
            return 4 * self.has_bias  # in_proj_bias (3 per channel) and out_proj.bias
        return int(self.has_bias) if self.type in _WEIGHTED else 0

    @property
    def has_inputs(self) -> bool:
        return self.type not in ("bn", "norm", "embed")

    @property
    def base_flops(self) -> int:
        return self.flops_coef * self.out_channels * self.in_channels + self.flops_linear * self.out_channels

    @property
    def weight_numel(self) -> int:
        return self.weight_coef * self.out_channels * self.in_channels if self.type in _WEIGHTED else 0

    @property
    def params(self) -> int:
        return self.weight_coef * self.out_channels * self.in_channels + self.vector_coef * self.out_channels


@dataclass(frozen=True)
class SkippedLayer:
    """A layer discovery found but cannot prune: it keeps its width."""

    name: str
    type: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name!r} ({self.type}): {self.reason}"


@dataclass(frozen=True)
class LayerGraph:
    """What :func:`amc.graph.discover.discover` finds: the decisions, the module records and the fingerprint."""

    layers: tuple[LayerSpec, ...]
    modules: tuple[ModuleRecord, ...]
    fingerprint: str
    input_shape: tuple[int, ...]  # (C, H, W) of one sample
    round_to: int
    total_params: int
    other_params: int  # parameters of modules that no record describes (never pruned)
    other_flops: int = 0  # FLOPs no record describes: layers of constant width the cost model only measured
    skipped: tuple[SkippedLayer, ...] = ()  # layers that keep their width, and why

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
        """Unit counts (channels, heads or channels per group) that keep ratios give under the rounding rule."""
        if len(keep) != len(self.layers):
            raise ConfigError(f"expected {len(self.layers)} keep ratios (one per layer), got {len(keep)}")
        return tuple(
            channels_for(k, spec.out_channels, self.round_to, name=spec.name) for k, spec in zip(keep, self.layers)
        )

    def candidate_key(self, keep: Sequence[float], granularity: str) -> tuple[int, ...]:
        """What makes two keep-ratio vectors the same pruned model: the one "same candidate" rule.

        ``channel``: the unit counts (:meth:`channels`); ``weight``: the weights kept in each conv/linear
        member of each decision (:func:`amc.graph.widths.weights_kept`). Evaluation caches, the search's
        repeat detection and the ladder's distinct candidates all key on it.

        Raises:
            ConfigError: Not one keep ratio per decision, a ratio outside (0, 1], or an unknown granularity.
        """
        counts = self.channels(keep)  # validates count and range either way
        if granularity == "channel":
            return counts
        if granularity != "weight":
            raise ConfigError(f"unknown granularity {granularity!r}; use 'channel' or 'weight'")
        numel = {r.name: r.weight_numel for r in self.modules if r.type in _WEIGHTED}
        return tuple(weights_kept(float(k), numel[name]) for k, spec in zip(keep, self.layers)
                     for name in spec.members if name in numel)


def fingerprint(model: nn.Module) -> str:
    """A hash of the architecture (module names and types) and every parameter's and buffer's shape."""
    h = hashlib.sha256()
    for name, module in model.named_modules():
        h.update(f"m:{name}:{type(module).__name__};".encode())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        h.update(f"t:{name}:{tuple(tensor.shape)};".encode())
    return h.hexdigest()[:16]


