"""The records half of layer discovery: module records, attention and parameter records, decisions.

Every FLOP ``FlopCounterMode`` counts in the base model is either in a record (so the cost model
follows it when channels are pruned) or in ``LayerGraph.other_flops``, which holds only FLOPs of
modules no decision touches. Anything else refuses the model: a cost that would silently be wrong.
"""

from __future__ import annotations

import math
from collections import defaultdict

from torch import nn

from amc.errors import UnsupportedModelError
from amc.graph.groups import Decision, ParamRef, module_type
from amc.graph.probe import Probe
from amc.graph.records import LayerGraph, LayerSpec, ModuleRecord, SkippedLayer, fingerprint

_WEIGHTED = ("conv", "depthwise", "grouped", "linear", "mha")


def build_graph(model: nn.Module, example, order: list, shapes: dict, types: dict, names: dict,
                decisions: list[Decision], round_to: int, seen: Probe, attentions: dict,
                skipped: tuple[SkippedLayer, ...], verified: bool = False) -> LayerGraph:
    out_deps: dict = defaultdict(list)
    in_deps: dict = defaultdict(list)
    params: list[ParamRef] = []
    for index, dec in enumerate(decisions):
        for (target, is_out), count in dec.counts.items():
            per_unit = count // dec.n_units
            if isinstance(target, ParamRef):
                if target not in params:
                    params.append(target)
            elif types[target] == "mha":  # the stream's width is its input and output width alike
                out_deps[target].append((index, per_unit))
                in_deps[target].append((index, per_unit))
                continue
            elif types[target] in ("bn", "norm", "embed"):
                is_out = True  # channel-wise: whichever way Torch-Pruning reaches them, their channels go
            elif types[target] == "depthwise" and not is_out:
                continue  # a depthwise conv's inputs follow its outputs; counted once, as outputs
            elif types[target] == "grouped" and not is_out:
                per_unit //= target.groups  # records hold a grouped conv's inputs per group
            (out_deps if is_out else in_deps)[target].append((index, per_unit))
        if dec.pattern == "head":
            out_deps[dec.attention.module].append((index, dec.unit))

    batch = example.shape[0]  # per sample: a layer may see more rows than samples (attention windows)
    records = [_record(m, types[m], names[m], shapes[m], out_deps[m], in_deps[m], batch, seen) for m in order]
    heads = {dec.attention.module for dec in decisions if dec.pattern == "head"}
    attention_modules = {parts.module: parts for parts in attentions.values() if parts.module in heads}
    for parts in attention_modules.values():
        flops = seen.own_flops.get(parts.module, 0)
        if not flops:
            continue  # an attention whose matmuls FlopCounterMode does not count: 0, as measured
        width = parts.proj.in_features
        if flops % width:
            raise UnsupportedModelError(
                f"attention {names[parts.module]!r} ({type(parts.module).__name__}) computes {flops} FLOPs, not a "
                f"multiple of its {width} head channels; its matmuls must scale with the number of heads"
            )
        records.append(ModuleRecord(names[parts.module], "attention", width, 1, 1, 0, False,
                                    tuple(out_deps[parts.module]), (), flops_per_channel=flops // width))
    for ref in params:
        size = ref.shape[ref.dim]
        records.append(ModuleRecord(ref.name, "param", size, math.prod(ref.shape) // size, 1, 0, False,
                                    tuple(out_deps[ref]), ()))

    other_flops = _constant_flops(model, seen, decisions, attention_modules, attentions, names, verified)
    other_flops += seen.constant_flops
    measured = sum(seen.own_flops.values()) + seen.constant_flops
    modelled = sum(r.base_flops for r in records)
    if modelled + other_flops != measured:
        raise UnsupportedModelError(
            f"{type(model).__name__}: FlopCounterMode counts {measured} FLOPs but the layer records describe "
            f"{modelled + other_flops}; its costs would be inexact, so it is not supported"
        )

    specs = [_spec(index, dec, records, types, shapes) for index, dec in enumerate(decisions)]
    total = sum(p.numel() for p in model.parameters())
    return LayerGraph(
        layers=tuple(specs),
        modules=tuple(records),
        fingerprint=fingerprint(model),
        input_shape=tuple(example.shape[1:]),
        round_to=round_to,
        total_params=total,
        other_params=total - sum(r.params for r in records),
        other_flops=other_flops,
        skipped=skipped,
    )


def _record(module, kind, name, shape, outs, ins, batch: int, seen: Probe) -> ModuleRecord:
    _, out_shape = shape
    if kind == "mha":  # q/k/v and output projections (4 E x E), and the attention matmuls (linear in E)
        width = module.embed_dim
        tokens = math.prod(out_shape) // (batch * width)
        matmuls = seen.own_flops.get(module, 0) - 8 * tokens * width * width
        if matmuls < 0 or matmuls % width:
            raise UnsupportedModelError(
                f"{name!r} (MultiheadAttention) computes {seen.own_flops.get(module, 0)} FLOPs, not its projections' "
                "plus attention matmuls that scale with its width; such attention is not supported"
            )
        return ModuleRecord(name, "mha", width, width, 4, tokens, module.in_proj_bias is not None, tuple(outs),
                            tuple(ins), flops_per_channel=matmuls // width)
    if kind == "bn":
        return ModuleRecord(name, "bn", module.num_features, 0, 0, 0, module.affine, tuple(outs), ())
    if kind == "embed":
        return ModuleRecord(name, "embed", module.embedding_dim, 0, 0, 0, False, tuple(outs), (),
                            params_per_channel=module.num_embeddings)
    if kind == "norm":
        width = module.normalized_shape[-1] if isinstance(module, nn.LayerNorm) else (
            module.num_channels if isinstance(module, nn.GroupNorm) else module.num_features)
        own = sum(p.numel() for p in module.parameters(recurse=False))
        return ModuleRecord(name, "norm", width, 0, 0, 0, False, tuple(outs), (), params_per_channel=own // width)
    if kind == "linear":
        positions = math.prod(out_shape) // (batch * module.out_features)
        return ModuleRecord(name, "linear", module.out_features, module.in_features, 1, positions,
                            module.bias is not None, tuple(outs), tuple(ins))
    return ModuleRecord(name, kind if kind != "grouped" else "conv", module.out_channels,
                        module.in_channels // module.groups, math.prod(module.kernel_size), math.prod(out_shape) // (batch * module.out_channels),
                        module.bias is not None, tuple(outs), tuple(ins))


def _constant_flops(model: nn.Module, seen: Probe, decisions: list[Decision], attention_modules: dict,
                    attentions: dict, names: dict, verified: bool) -> int:
    """FLOPs of modules whose own forward the records do not describe, when their width never changes.

    With ``verified`` (the decisions are then tried on a pruned copy, which drops any that change these FLOPs),
    so is a submodule none of whose layers a decision cuts the outputs of, such as PVT's spatial-reduction
    attention (q and a fused kv Linear): a decision that changes its matmuls after all is dropped by the trial.
    """
    touched = {target for dec in decisions for (target, _) in dec.counts if isinstance(target, nn.Module)}
    cut_out = {target for dec in decisions for (target, is_out) in dec.counts if is_out}
    fixed_heads = {parts.module for parts in attentions.values()
                   if parts.module not in attention_modules and not cut_out.intersection(parts.projections)}
    other = 0
    for module, flops in seen.own_flops.items():
        if module_type(module) in _WEIGHTED or module in attention_modules:
            continue
        inner_fixed = verified and module is not model and not cut_out.intersection(module.modules())
        if module in fixed_heads or inner_fixed or (
                module not in touched and any(True for _ in module.parameters(recurse=False))):
            other += flops  # e.g. nn.MultiheadAttention, or heads no decision prunes: constant width
            continue
        raise UnsupportedModelError(
            f"{names.get(module) or '<model>'!r} ({type(module).__name__}) computes {flops} FLOPs in its own "
            "forward (matmuls between activations), which the cost model cannot follow when channels are "
            "pruned: move them into a Conv2d/Linear layer, or into an attention module (num_heads, a fused qkv "
            "Linear and a proj Linear; or q/k/v Linears and an output Linear)"
        )
    return other


def _spec(index: int, dec: Decision, records: list[ModuleRecord], types: dict, shapes: dict) -> LayerSpec:
    mine = [r for r in records if any(d == index for d, _ in r.out_deps)]
    root = dec.root
    in_shape, out_shape = shapes[root]
    is_linear = types[root] == "linear"
    kind = "depthwise" if any(r.type == "depthwise" for r in mine) else types[root]
    return LayerSpec(
        name=dec.name,
        kind="conv" if kind == "grouped" else kind,
        in_channels=root.in_features if is_linear else root.in_channels,
        out_channels=dec.n_units,
        kernel=1 if is_linear else root.kernel_size[0],
        stride=1 if is_linear else root.stride[0],
        groups=1 if is_linear else root.groups,
        in_hw=(1, 1) if is_linear else tuple(in_shape[2:4]),
        out_hw=(1, 1) if is_linear else tuple(out_shape[2:4]),
        flops=sum(r.base_flops for r in mine),
        params=sum(r.params for r in mine),
        members=tuple(r.name for r in mine if r.type != "param"),
        unit=dec.unit,
        pattern=dec.pattern,
        parameters=tuple(r.name for r in mine if r.type == "param"),
    )
