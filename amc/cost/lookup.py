"""The latency lookup table's layout: one entry per timed module, and how its grid is read.

The table is cached as JSON (:func:`cache_path`), keyed by what it was measured for (:func:`_cache_key`);
:func:`_load` reads a cached one back only when it is intact and of exactly that key.

An entry is a module's configuration (what decides its latency besides channel counts: kernel, stride,
input size, ...) and the grid of (output, input) channel counts it is timed at; modules of one configuration
share measurements. :func:`standalone_module` builds the module that times a grid point, :func:`bilinear`
reads the grid between its points.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from amc.cost.timing import device_name
from amc.graph.blocks import Block
from amc.graph.discover import LayerGraph, ModuleRecord
from amc.paths import default_cache_dir

log = logging.getLogger(__name__)

FORMAT = "amc-latency/4"  # 4: fit through the base; 3: calibration spread over the passes; 2: medians; 1: minimums


@dataclass(frozen=True)
class TableEntry:
    """One module's table: latency (ms) on a grid of (output, input) channel counts."""

    name: str
    config: tuple  # what decides the latency besides channel counts (shared between modules)
    out_grid: tuple[int, ...]
    in_grid: tuple[int, ...]


def bilinear(grid: np.ndarray, outs: np.ndarray, ins: np.ndarray, out_q: np.ndarray, in_q: np.ndarray) -> np.ndarray:
    """``grid`` (len(outs), len(ins)) interpolated at every (out_q, in_q) pair."""
    rows = np.stack([np.interp(in_q, ins, row) for row in grid]) if len(ins) > 1 else np.repeat(grid, len(in_q), 1)
    if len(outs) == 1:
        return np.repeat(rows, len(out_q), 0)
    return np.stack([np.interp(out_q, outs, rows[:, j]) for j in range(rows.shape[1])], axis=1)


def channel_grid(lo: int, hi: int, points: int, step: int = 1) -> tuple[int, ...]:
    """At most ``points`` counts from ``hi`` down to ``lo`` on the lattice the rounding rule reaches
    (``hi - j * step``), so a table timed for multiples of 8 never times the slow counts between them."""
    lattice = np.arange(hi, lo - 1, -max(1, step))[::-1]
    if lattice[0] != lo:
        lattice = np.concatenate([[lo], lattice])
    if len(lattice) <= points:
        return tuple(int(v) for v in lattice)
    return tuple(int(v) for v in np.unique(lattice[np.rint(np.linspace(0, len(lattice) - 1, points)).astype(int)]))


def _step(deps: tuple[tuple[int, int], ...], graph: LayerGraph) -> int:
    """Spacing of a module's reachable channel counts: each decision moves in steps of ``round_to``."""
    return min((k * graph.round_to for _, k in deps), default=1)


def _reachable(base: int, deps: tuple[tuple[int, int], ...], graph: LayerGraph) -> int:
    """The fewest channels a module can be left with (every decision at one rounding step)."""
    lost = sum(k * (graph.layers[d].out_channels - min(graph.round_to, graph.layers[d].out_channels))
               for d, k in deps)
    return max(1, base - lost)


def table_entries(model: nn.Module, graph: LayerGraph, points: int) -> tuple[list[TableEntry], dict[str, nn.Module]]:
    """One table entry per module record, with each module's configuration and channel grids."""
    modules = dict(model.named_modules())
    inputs: dict[str, tuple[int, ...]] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            first = next(t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor))  # HF passes kwargs
            inputs.setdefault(name, tuple(first.shape[1:]))
        return record

    handles = [modules[r.name].register_forward_hook(hook(r.name), with_kwargs=True)
               for r in graph.modules if r.name in modules]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *graph.input_shape))
    finally:
        for handle in handles:
            handle.remove()
    entries = []
    for rec in graph.modules:
        module = modules.get(rec.name)
        out_grid = channel_grid(_reachable(rec.out_channels, rec.out_deps, graph), rec.out_channels, points,
                                _step(rec.out_deps, graph))
        if rec.type in ("conv", "linear"):
            total_in = rec.in_channels * getattr(module, "groups", 1)
            in_grid = channel_grid(_reachable(total_in, rec.in_deps, graph), total_in, points,
                                   _step(rec.in_deps, graph))
        else:  # batch norm and depthwise convs: the input follows the output
            in_grid = (0,)
        config = _param_config(rec) if rec.type == "param" else _module_config(rec, module, inputs[rec.name])
        entries.append(TableEntry(rec.name, config, out_grid, in_grid))
    return entries, modules


def _param_config(rec: ModuleRecord) -> tuple:
    return ("param", rec.in_channels)  # a bare parameter: an element-wise use of (out, per channel) values


def _module_config(rec: ModuleRecord, module: nn.Module, input_shape: tuple[int, ...]) -> tuple:
    spatial = tuple(input_shape[1:])
    if isinstance(module, nn.Conv2d):
        kind = "depthwise" if rec.type == "depthwise" else "conv"
        return (kind, module.kernel_size, module.stride, module.padding, module.dilation,
                1 if kind == "depthwise" else module.groups, module.bias is not None, module.padding_mode, spatial)
    if isinstance(module, nn.Linear):
        return (rec.type, module.bias is not None, tuple(input_shape[:-1]))
    if isinstance(module, nn.MultiheadAttention):
        return ("mha", module.num_heads, module.in_proj_bias is not None, tuple(input_shape))
    if rec.type == "attention":  # the matmuls of out_channels head channels over the module's tokens
        tokens = input_shape[-2] if len(input_shape) >= 2 else 1
        rows = max(1, rec.flops_per_channel // max(1, 4 * tokens * tokens))  # windows per sample
        return ("attention", tokens, rows, min((k for _, k in rec.out_deps), default=rec.out_channels))
    if rec.type == "embed":
        return ("embed", module.num_embeddings, tuple(input_shape))
    if isinstance(module, nn.LayerNorm):  # channels last, or first (timm's LayerNorm2d): the same elements
        lead = input_shape[:-1] if input_shape and input_shape[-1] == rec.out_channels else spatial
        return ("layernorm", tuple(lead))
    if isinstance(module, nn.GroupNorm):
        return ("groupnorm", module.num_groups, spatial)
    return (rec.type, type(module).__name__, spatial)


class _AttentionCore(nn.Module):
    """``softmax(q k^T) v`` of ``rows`` windows of ``tokens`` tokens, heads of ``head`` channels (q = k = v)."""

    def __init__(self, tokens: int, rows: int, head: int) -> None:
        super().__init__()
        self.tokens, self.rows, self.head = tokens, rows, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0] * self.rows, self.tokens, -1, self.head).transpose(1, 2)
        return F.scaled_dot_product_attention(x, x, x)


class _MhaCore(nn.Module):
    """Self-attention through ``nn.MultiheadAttention`` (batch first)."""

    def __init__(self, width: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(width, heads, bias=bias, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x, need_weights=False)[0]


class _EmbedCore(nn.Module):
    """An embedding lookup of the input's (float) ids."""

    def __init__(self, num: int, out: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x.long().clamp(0, self.embed.num_embeddings - 1))


class _ParamCore(nn.Module):
    """The element-wise use of a bare parameter (a token, a position embedding, a layer scale)."""

    def __init__(self, out: int, per: int) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.zeros(out, per))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.value


def standalone_module(config: tuple, out: int, inp: int) -> tuple[nn.Module, tuple[int, ...]]:
    """A fresh module of this configuration and channel counts, and its per-sample input shape."""
    kind = config[0]
    if kind in ("conv", "depthwise"):
        _, kernel, stride, padding, dilation, groups, bias, padding_mode, spatial = config
        channels_in = out if kind == "depthwise" else inp
        module = nn.Conv2d(channels_in, out, kernel, stride, padding, dilation,
                           groups=out if kind == "depthwise" else groups, bias=bias, padding_mode=padding_mode)
        return module, (channels_in, *spatial)
    if kind == "linear":
        _, bias, lead = config
        return nn.Linear(inp, out, bias=bias), (*lead, inp)
    if kind == "mha":
        _, heads, bias, shape = config
        return _MhaCore(out, heads, bias), (*shape[:-1], out)
    if kind == "attention":
        _, tokens, rows, head = config
        return _AttentionCore(tokens, rows, head), (rows * tokens, out)
    if kind == "embed":
        _, num, ids = config
        return _EmbedCore(num, out), tuple(ids)
    if kind == "param":
        return _ParamCore(out, config[1]), (out, config[1])
    if kind == "layernorm":
        return nn.LayerNorm(out), (*config[1], out)
    if kind == "groupnorm":
        return nn.GroupNorm(config[1], out), (out, *config[2])
    _, cls_name, spatial = config
    module = getattr(nn, cls_name)(out)
    return module, (out, *spatial)


def _cache_key(graph: LayerGraph, config: Any, entries: list[TableEntry] | None = None,
               blocks: Sequence[Block] = ()) -> dict:
    """What a table was measured for (``config``: a :class:`~amc.cost.latency.LatencyConfig`). With ``entries``,
    also every module's configuration (kernel, stride, padding, groups, input size): models of equal parameter
    shapes that compute differently differ."""
    key = _path_key(graph, config, blocks)
    if entries is not None:
        key["modules"] = hashlib.sha256(repr([(e.name, e.config) for e in entries]).encode()).hexdigest()[:16]
    return key


def _path_key(graph: LayerGraph, config: Any, blocks: Sequence[Block] = ()) -> dict:
    key = _width_key(graph, config)
    if blocks:  # calibrated on block-dropped models too: another table (the width-only one keeps its key)
        key["blocks"] = [b.name for b in blocks]
    return key


def _width_key(graph: LayerGraph, config: Any) -> dict:
    return {"format": FORMAT, "device": device_name(config.device), "torch": torch.__version__,
            "threads": config.resolved_threads(), "batch_size": config.batch_size, "model": graph.fingerprint,
            "input_shape": list(graph.input_shape), "round_to": graph.round_to, "grid": config.grid,
            "min_run_time": config.min_run_time, "model_run_time": config.model_run_time,
            "calibration_keeps": list(config.calibration_keeps), "calibration_random": config.calibration_random,
            "passes": config.passes, "calibration_rounds": config.calibration_rounds}


def cache_path(graph: LayerGraph, config: Any, blocks: Sequence[Block] = ()) -> Path:
    """Where the table of ``graph`` (calibrated with ``blocks`` dropped too, when given) is cached."""
    key = _path_key(graph, config, blocks)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    return root / f"latency-{digest}.json"


def _load(path: Path, key: dict, entries: list[TableEntry]) -> dict | None:
    """The cached table when it is intact and was measured for exactly this key; None otherwise."""
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text())
        if not isinstance(table, dict) or table.get("key") != key:
            raise ValueError("it was measured for another device, model or setting")
        modules = table["modules"]
        if [m["name"] for m in modules] != [e.name for e in entries]:
            raise ValueError("its modules do not match the model")
        for m, e in zip(modules, entries):
            if m["out_grid"] != list(e.out_grid) or m["in_grid"] != list(e.in_grid):
                raise ValueError(f"the grid of {e.name!r} does not match")
            ms = np.asarray(m["ms"], dtype=np.float64)
            if ms.shape != (len(e.out_grid), len(e.in_grid)) or not np.all(np.isfinite(ms)) or np.any(ms <= 0):
                raise ValueError(f"the entries of {e.name!r} are malformed")
        for field in ("alpha", "gamma", "measured_base_ms"):
            if not math.isfinite(float(table[field])):
                raise ValueError(f"{field} is not a finite number")
        if float(table["alpha"]) < 0 or float(table["gamma"]) <= 0 or float(table["measured_base_ms"]) <= 0 \
                or not isinstance(table["calibration"], list):
            raise ValueError("its calibration is malformed")
        return table
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring latency table %s (%s); rebuilding it", path, exc)
        return None


__all__ = ["FORMAT", "TableEntry", "cache_path", "bilinear", "channel_grid", "standalone_module", "table_entries"]
