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

_WEIGHTED = ("conv", "depthwise", "grouped", "linear")


def build_graph(model: nn.Module, example, order: list, shapes: dict, types: dict, names: dict,
                decisions: list[Decision], round_to: int, seen: Probe, attentions: dict,
                skipped: tuple[SkippedLayer, ...]) -> LayerGraph:
    out_deps: dict = defaultdict(list)
    in_deps: dict = defaultdict(list)
    params: list[ParamRef] = []
    for index, dec in enumerate(decisions):
        for (target, is_out), count in dec.counts.items():
            per_unit = count // dec.n_units
            if isinstance(target, ParamRef):
                if target not in params:
                    params.append(target)
            elif types[target] in ("bn", "norm"):
                is_out = True  # channel-wise: whichever way Torch-Pruning reaches them, their channels go
            elif types[target] == "depthwise" and not is_out:
                continue  # a depthwise conv's inputs follow its outputs; counted once, as outputs
            elif types[target] == "grouped" and not is_out:
                per_unit //= target.groups  # records hold a grouped conv's inputs per group
            (out_deps if is_out else in_deps)[target].append((index, per_unit))
        if dec.pattern == "head":
            out_deps[dec.attention.module].append((index, dec.unit))

    batch = example.shape[0]  # per sample: a layer may see more rows than samples (attention windows)
    records = [_record(m, types[m], names[m], shapes[m], out_deps[m], in_deps[m], batch) for m in order]
    attention_modules = {parts.module: parts for parts in attentions.values()}
    for qkv, parts in attentions.items():
        flops = seen.own_flops.get(parts.module, 0)
        if not flops:
            continue  # F.scaled_dot_product_attention on CPU: FlopCounterMode counts 0, and so do we
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

    other_flops = _constant_flops(seen, decisions, attention_modules, names)
    measured = sum(seen.own_flops.values())
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


def _record(module, kind, name, shape, outs, ins, batch: int) -> ModuleRecord:
    _, out_shape = shape
    if kind == "bn":
        return ModuleRecord(name, "bn", module.num_features, 0, 0, 0, module.affine, tuple(outs), ())
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


def _constant_flops(seen: Probe, decisions: list[Decision], attention_modules: dict, names: dict) -> int:
    """FLOPs of modules whose own forward the records do not describe, when their width never changes."""
    touched = {target for dec in decisions for (target, _) in dec.counts if isinstance(target, nn.Module)}
    other = 0
    for module, flops in seen.own_flops.items():
        if module_type(module) in _WEIGHTED or module in attention_modules:
            continue
        if module not in touched and any(True for _ in module.parameters(recurse=False)):
            other += flops  # e.g. nn.MultiheadAttention, which no decision touches: constant width
            continue
        raise UnsupportedModelError(
            f"{names.get(module) or '<model>'!r} ({type(module).__name__}) computes {flops} FLOPs in its own "
            "forward (matmuls between activations), which the cost model cannot follow when channels are "
            "pruned: move them into a Conv2d/Linear layer, or into an attention module with a num_heads "
            "attribute, a fused qkv Linear and a proj Linear"
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
