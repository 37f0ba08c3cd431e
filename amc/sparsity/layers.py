"""The prunable linear layers of a decoder language model, and the decisions (units) that set their sparsity.

A prunable layer is every ``nn.Linear`` and every ``transformers`` ``Conv1D`` (GPT-2's projections, which
compute ``x @ W + b`` with ``W`` stored ``(in, out)``: handled as a linear layer with a transposed weight, so a
GPT-2 model keeps its own layout and saves back with ``save_pretrained`` as it is), except the output head
(``get_output_embeddings()``; a linear named ``lm_head``, ``head`` or ``embed_out`` outside the blocks) and any
layer whose weight is an embedding's (tied weights).

Layers are grouped per transformer block by module name: the block is the name up to and including its
first integer component (``model.layers.3.self_attn.q_proj`` -> ``model.layers.3``; ``transformer.h.0.mlp.c_fc``
-> ``transformer.h.0``), which fits Llama, GPT-2 and any model that keeps its blocks in a ``ModuleList`` or
``Sequential``; a layer outside any indexed container is its own block. One sparsity decision (a
:class:`SparsityUnit`) per block (attention and MLP together, ``per="block"``) or per layer (``per="layer"``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from amc.errors import ConfigError, UnsupportedModelError

PER = ("block", "layer")


@dataclass(frozen=True)
class SparseLinear:
    """One prunable linear layer.

    Attributes:
        name: Qualified module name, e.g. ``"model.layers.0.self_attn.q_proj"``.
        block: Name of the transformer block that holds it, e.g. ``"model.layers.0"``.
        in_features: Input width (the columns of the ``(out, in)`` weight).
        out_features: Output width (its rows).
        transposed: The module stores its weight ``(in, out)`` (``transformers``' ``Conv1D``).
    """

    name: str
    block: str
    in_features: int
    out_features: int
    transposed: bool = False

    @property
    def numel(self) -> int:
        return self.in_features * self.out_features


@dataclass(frozen=True)
class SparsityUnit:
    """One sparsity decision: the layers it sets (a block's, or one layer) and their weight count."""

    name: str
    members: tuple[str, ...]
    numel: int


@dataclass(frozen=True)
class SparsityLayout:
    """The prunable layers of a model in forward (module) order and the decisions over them.

    Attributes:
        layers: Every prunable layer.
        units: The decisions, in the order of their first layer.
        per: ``"block"`` (one decision per transformer block) or ``"layer"`` (one per linear layer).
    """

    layers: tuple[SparseLinear, ...]
    units: tuple[SparsityUnit, ...]
    per: str

    @property
    def total(self) -> int:
        """The number of prunable weights."""
        return sum(layer.numel for layer in self.layers)

    def layer(self, name: str) -> SparseLinear:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ConfigError(f"no prunable layer named {name!r}; the layers are {[x.name for x in self.layers][:8]} ...")

    def unit_of(self) -> dict[str, str]:
        """Layer name -> the name of the unit that decides its sparsity."""
        return {member: unit.name for unit in self.units for member in unit.members}


def conv1d_type() -> type | None:
    """``transformers.pytorch_utils.Conv1D``, or None without ``transformers``."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return None
    return Conv1D


def block_of(name: str) -> str:
    """The block prefix of a module name: up to and including its first integer component (else the name)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return name


HEAD_NAMES = ("lm_head", "head", "embed_out")  # output heads by name, outside the transformer blocks


def _head_names(model: nn.Module) -> set[str]:
    """Names of the output head: ``get_output_embeddings()`` of the model or of a ``transformers`` model inside
    a wrapper, a linear named as a head outside the blocks, and linears that share an embedding's weight."""
    heads_by_identity = set()
    for module in model.modules():
        getter = getattr(module, "get_output_embeddings", None)
        try:
            head = getter() if callable(getter) else None
        except (NotImplementedError, AttributeError):  # a transformers base model without a head
            head = None
        if head is not None:
            heads_by_identity.add(id(head))
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    heads: set[str] = set()
    for name, module in model.named_modules():
        tied = isinstance(getattr(module, "weight", None), Tensor) and id(module.weight) in embedding_weights
        named = name.split(".")[-1] in HEAD_NAMES and block_of(name) == name
        if id(module) in heads_by_identity or named or tied:
            heads.add(name)
    return heads


def discover_sparse(model: nn.Module, *, per: str = "block", exclude: Iterable[str] = ()) -> SparsityLayout:
    """The prunable linear layers of ``model`` and one decision per block or per layer.

    Args:
        model: A Hugging Face causal LM (Llama, GPT-2, ...), a wrapper around one, or any module of linears.
        per: ``"block"`` (attention and MLP of a transformer block share one sparsity) or ``"layer"``.
        exclude: Qualified module names (or name prefixes) left dense besides the output head.

    Raises:
        ConfigError: An unknown ``per``.
        UnsupportedModelError: The model has no prunable linear layer.
    """
    if per not in PER:
        raise ConfigError(f"per must be one of {PER} (one sparsity per transformer block or per linear layer), "
                          f"got {per!r}")
    conv1d = conv1d_type()
    skipped = _head_names(model)
    excluded = tuple(exclude)
    layers: list[SparseLinear] = []
    for name, module in model.named_modules():
        if name in skipped or any(name == x or name.startswith(x + ".") for x in excluded):
            continue
        if isinstance(module, nn.Linear):
            out_f, in_f = module.weight.shape
            layers.append(SparseLinear(name, block_of(name), int(in_f), int(out_f)))
        elif conv1d is not None and isinstance(module, conv1d):
            in_f, out_f = module.weight.shape
            layers.append(SparseLinear(name, block_of(name), int(in_f), int(out_f), transposed=True))
    if not layers:
        raise UnsupportedModelError(f"{type(model).__name__} has no prunable linear layer (nn.Linear or Conv1D) "
                                    "besides its output head: sparsity applies to models made of linear layers")
    if per == "layer":
        units = tuple(SparsityUnit(x.name, (x.name,), x.numel) for x in layers)
    else:
        blocks: dict[str, list[SparseLinear]] = {}
        for layer in layers:
            blocks.setdefault(layer.block, []).append(layer)
        units = tuple(SparsityUnit(b, tuple(x.name for x in members), sum(x.numel for x in members))
                      for b, members in blocks.items())
    return SparsityLayout(tuple(layers), units, per)


def weight_rows(module: nn.Module, layer: SparseLinear) -> Tensor:
    """The layer's (dense, unmasked) weight as ``(out, in)``: a view of the stored tensor (transposed for Conv1D)."""
    weight = getattr(module, "weight_orig", None)
    if weight is None:
        weight = module.weight
    return weight.t() if layer.transposed else weight


def to_stored(rows: Tensor, layer: SparseLinear) -> Tensor:
    """An ``(out, in)`` tensor in the module's stored layout."""
    return rows.t().contiguous() if layer.transposed else rows.contiguous()


def zeros_per_layer(model: nn.Module, layout: SparsityLayout) -> dict[str, int]:
    """The number of zero weights of each prunable layer, counted from the effective weights."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        return {x.name: int((modules[x.name].weight == 0).sum()) for x in layout.layers}
