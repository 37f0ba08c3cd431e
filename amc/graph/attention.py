"""Attention modules whose whole heads can be pruned, wherever they sit in a model.

Two layouts are recognised:

- fused: a module with a ``num_heads`` attribute, a ``qkv`` Linear (``3 * heads * head_dim`` outputs) and a
  ``proj`` Linear (timm's layout). Torch-Pruning's own head group (rooted at ``proj``'s inputs) prunes it;
- separate: ``q``/``k``/``v`` Linears (``q_proj``/``k_proj``/``v_proj``, ``query``/``key``/``value``, ...)
  in one module and the output Linear (``o_proj``, ``out_proj``, ``dense``, ...) beside them or in a sibling
  module (BERT's ``attention.self`` and ``attention.output.dense``), as in Hugging Face's ViT, BERT and
  Llama. With fewer key/value heads than query heads (grouped-query attention) a unit is one key/value head
  together with the query heads that read it. Torch-Pruning's tracing between those Linears (reshapes,
  rotary embeddings, ``repeat_kv``) maps indices wrongly or for ever (25 minutes on a tiny Llama), so
  :func:`rewire` replaces it by direct dependencies: a channel of ``o``'s inputs is the same channel of ``q``
  and, through its key/value head, a channel of ``k`` and ``v``.

The attention module's head-count attributes are updated after pruning (:func:`set_heads`); Hugging Face's
forward passes read the head count from the tensors (``view(..., -1, head_dim)``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

_QKV_NAMES = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("q", "k", "v"), ("q_lin", "k_lin", "v_lin"),
              ("to_q", "to_k", "to_v"))
_OUT_NAMES = ("o_proj", "out_proj", "proj", "dense", "out_lin", "o", "c_proj", "to_out")
_HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
_KV_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")


@dataclass(frozen=True)
class AttentionParts:
    """An attention module prunable by whole heads (or whole key/value groups).

    Attributes:
        module: Where the attention's matmuls run (their FLOPs are its own).
        owner: The module a head decision is named after (``module``, or BERT's ``attention`` above it).
        q, k, v: The separate projections (None when fused).
        qkv: The fused projection (None when separate).
        proj: The output projection (its inputs are the heads' channels).
        num_heads: Query heads.
        num_kv_heads: Key/value heads (``num_heads`` unless grouped-query attention).
    """

    module: nn.Module
    owner: nn.Module
    q: nn.Linear | None
    k: nn.Linear | None
    v: nn.Linear | None
    qkv: nn.Linear | None
    proj: nn.Linear
    num_heads: int
    num_kv_heads: int
    head_dim: int  # as found (the modules' widths change when heads are pruned; this does not)

    @property
    def fused(self) -> bool:
        return self.qkv is not None

    @property
    def root(self) -> nn.Linear:
        """The first projection: where the decision's shape is read."""
        return self.qkv if self.fused else self.q

    @property
    def units(self) -> int:
        """Units of the decision: key/value heads (each with its query heads)."""
        return self.num_kv_heads

    @property
    def unit(self) -> int:
        """Channels of ``proj``'s inputs per unit."""
        return self.head_dim * self.num_heads // self.num_kv_heads

    @property
    def projections(self) -> tuple[nn.Linear, ...]:
        return (self.qkv,) if self.fused else (self.q, self.k, self.v)


def _int_attr(module: nn.Module, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _fused(module: nn.Module) -> AttentionParts | None:
    heads, qkv, proj = _int_attr(module, ("num_heads",)), getattr(module, "qkv", None), getattr(module, "proj", None)
    if heads is None or not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)):
        return None
    if proj.in_features % heads or qkv.out_features != 3 * proj.in_features:
        return None
    return AttentionParts(module, module, None, None, None, qkv, proj, heads, heads, proj.in_features // heads)


def _linear_child(module: nn.Module, names: tuple[str, ...]) -> nn.Linear | None:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Linear):
            return child
    return None


def _separate(owner: nn.Module) -> AttentionParts | None:
    """q/k/v in ``owner`` with the output projection beside them, or q/k/v in one child and it in another."""
    homes = [(owner, owner)] + [(child, owner) for child in owner.children()]
    for inner, _ in homes:
        for names in _QKV_NAMES:
            q, k, v = (getattr(inner, n, None) for n in names)
            if not all(isinstance(m, nn.Linear) for m in (q, k, v)):
                continue
            places = [owner] if inner is owner else [c for c in owner.children() if c is not inner]
            for place in places:
                proj = _linear_child(place, _OUT_NAMES)
                if proj is None and place is not owner:
                    proj = next((m for m in place.children() if isinstance(m, nn.Linear)), None)
                if proj is not None and proj not in (q, k, v):
                    return _check_separate(inner, owner, q, k, v, proj)
    return None


def _check_separate(inner, owner, q, k, v, proj) -> AttentionParts | None:
    width = q.out_features
    if proj.in_features != width or k.out_features != v.out_features or q.in_features != k.in_features:
        return None
    head_dim = _int_attr(inner, ("head_dim", "attention_head_size", "head_size", "d_head"))
    heads = _int_attr(inner, _HEAD_ATTRS)
    if head_dim is None:
        head_dim = width // heads if heads and width % heads == 0 else None
    if head_dim is None:
        config = getattr(inner, "config", None)
        heads = _int_attr(config, ("num_attention_heads", "num_heads", "n_head")) if config is not None else None
        head_dim = width // heads if heads and width % heads == 0 else None
    if head_dim is None or width % head_dim or k.out_features % head_dim:
        return None
    n_heads, n_kv = width // head_dim, k.out_features // head_dim
    if n_heads % n_kv:
        return None
    return AttentionParts(inner, owner, q, k, v, None, proj, n_heads, n_kv, head_dim)


def attention_parts(module: nn.Module) -> AttentionParts | None:
    """The parts of ``module`` if it is an attention module prunable by whole heads, else None."""
    return _fused(module) or _separate(module)


def find_attentions(model: nn.Module) -> dict[nn.Module, AttentionParts]:
    """Every recognised attention module of ``model``, keyed by its first projection (the innermost match wins:
    a block holding an attention module is not one itself)."""
    found: dict[nn.Module, AttentionParts] = {}
    for module in model.modules():
        parts = attention_parts(module)
        if parts is not None:
            found[parts.root] = parts  # modules() is pre-order: a deeper match replaces its container's
    return found


def set_heads(parts_module: nn.Module, heads: int, kv_heads: int, head_dim: int) -> None:
    """Updates the head-count attributes of an attention module (and of the module holding its q/k/v)."""
    for module in {parts_module, *[c for c in parts_module.children() if not isinstance(c, nn.Linear)]}:
        for name in _HEAD_ATTRS:
            if _int_attr(module, (name,)) is not None:
                setattr(module, name, heads)
        for name in _KV_ATTRS:
            if _int_attr(module, (name,)) is not None:
                setattr(module, name, kv_heads)
        for name in ("all_head_size", "inner_dim", "attn_dim"):  # attn_dim: timm >= 1.0.20 reshapes with it
            if _int_attr(module, (name,)) is not None:
                setattr(module, name, heads * head_dim)
        if _int_attr(module, ("kv_dim",)) is not None:
            module.kv_dim = kv_heads * head_dim


def rewire(dg, parts: AttentionParts) -> None:
    """Replaces Torch-Pruning's traced dependencies between ``q``/``k``/``v`` and ``proj`` by direct ones.

    The ops between them (reshapes, rotary embeddings, matmuls, ``repeat_kv``) are cut out of the graph;
    ``proj``'s input channel ``c`` is ``q``'s output channel ``c`` and, for head ``h = c // head_dim``, the
    channel ``(h // group) * head_dim + c % head_dim`` of ``k`` and ``v``. Idempotent.
    """
    if parts.fused or getattr(dg, "_amc_rewired", None) is not None and parts.proj in dg._amc_rewired:
        return
    from torch_pruning import _helpers, ops
    from torch_pruning.dependency.dependency import Dependency

    op_types = {ops.OPTYPE.CONCAT, ops.OPTYPE.SPLIT, ops.OPTYPE.ELEMENTWISE, ops.OPTYPE.RESHAPE, ops.OPTYPE.UNBIND,
                ops.OPTYPE.EXPAND, ops.OPTYPE.SLICE}

    nodes = {m: dg.module2node[m] for m in (parts.q, parts.k, parts.v, parts.proj)}
    ends = set(nodes.values())
    interior, stack = set(), [n for m, n in nodes.items() if m is not parts.proj]
    while stack:  # the op nodes between the projections and proj
        for nxt in stack.pop().outputs:
            if nxt in ends or nxt in interior or nxt.type not in op_types:
                continue
            interior.add(nxt)
            stack.append(nxt)
    for node in [*interior, *ends]:
        node.dependencies = [d for d in node.dependencies if d.source not in interior and d.target not in interior]
    for node in dg.module2node.values():
        if node not in interior:
            node.dependencies = [d for d in node.dependencies if d.target not in interior]
    d, group = parts.head_dim, parts.num_heads // parts.num_kv_heads

    def to_kv(idxs):
        seen, out = set(), []
        for i in idxs:
            kv = (i.idx // d // group) * d + i.idx % d
            if kv not in seen:
                seen.add(kv)
                out.append(_helpers._HybridIndex(idx=kv, root_idx=i.root_idx))
        return out

    def to_q(idxs):
        return [_helpers._HybridIndex(idx=((i.idx // d) * group + r) * d + i.idx % d, root_idx=i.root_idx)
                for i in idxs for r in range(group)]

    out_fn = dg.get_pruner_of_module(parts.q).prune_out_channels
    in_fn = dg.get_pruner_of_module(parts.proj).prune_in_channels
    q, k, v, o = (nodes[m] for m in (parts.q, parts.k, parts.v, parts.proj))
    links = [(o, in_fn, q, out_fn, None), (o, in_fn, k, out_fn, to_kv), (o, in_fn, v, out_fn, to_kv),
             (q, out_fn, o, in_fn, None), (q, out_fn, k, out_fn, to_kv), (q, out_fn, v, out_fn, to_kv),
             (k, out_fn, q, out_fn, to_q), (k, out_fn, o, in_fn, to_q), (k, out_fn, v, out_fn, None),
             (v, out_fn, q, out_fn, to_q), (v, out_fn, o, in_fn, to_q), (v, out_fn, k, out_fn, None)]
    for source, trigger, target, handler, mapping in links:
        dep = Dependency(trigger, handler, source, target)
        dep.index_mapping = [mapping, None]
        source.dependencies.append(dep)
    if getattr(dg, "_amc_rewired", None) is None:
        dg._amc_rewired = set()
    dg._amc_rewired.add(parts.proj)
