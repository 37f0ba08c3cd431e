"""Measured latency as a cost model: a per-layer lookup table, timed on the device the search runs on.

Each prunable module (conv, depthwise conv, linear, batch norm, other norms, embeddings, bare parameters and
the matmuls of attention heads) is timed alone with
``torch.utils.benchmark`` on a grid of its (output, input) channel counts, at the input size it sees in
the model, the chosen batch size and thread count (NetAdapt's and HALP's lookup tables). Modules with the
same configuration share measurements. Between grid points the table is interpolated bilinearly.

What the table does not time (activations, residual additions, pooling, the forward pass's fixed
overhead) is calibrated on whole models: the base model, two uniformly pruned ones and a few random ones
are timed, and ``latency = gamma * sum(table) + alpha`` is fitted by least squares through the base model's
measurement (``gamma, alpha >= 0``): the base is the reference of every ratio. The
calibration's interleaved rounds are spread over the table's timing passes: both see the machine over the
same minutes, so a spell of it (this project's VM changes speed by 30-60% for seconds to minutes) cannot
set the scale of the whole table.

The prediction is not forced to grow with every channel: on CPUs an odd channel count can run slower
than a larger, aligned one, and the table keeps what it measured (the budget projection checks the
channel count asked for, so every clipped policy still meets the budget). ``gamma, alpha >= 0``.
With ``round_to`` 8 every reachable count is aligned and, for small layers, timed exactly.

Depth pruning (``--depth``): a removable block replaced by the identity takes its modules out of the forward
pass, so the prediction of such a model leaves their table entries out (:meth:`LatencyCost.without_records`);
the identity itself costs nothing. What the block ran besides its modules (its activations and its addition)
goes with them through ``gamma``. Built with ``blocks``, the calibration also times models with dropped
blocks, so the fit sees how the forward pass shrinks when whole blocks leave it.

Tables are cached as JSON in the base-model cache, keyed by device, torch version, threads, batch size,
model fingerprint, input shape and grid (and the blocks the calibration dropped); a corrupt or foreign file
is rebuilt, never trusted.
The table's layout and its cache file are :mod:`amc.cost.lookup`; the timers are :mod:`amc.cost.timing`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from amc.cost import timing
from amc.cost.base import ShapeCost
from amc.cost.lookup import (TableEntry, _cache_key, _load, bilinear, cache_path, standalone_module,
                             table_entries)
from amc.cost.timing import freed_memory_kept, measure_model_latency
from amc.errors import ConfigError
from amc.graph.blocks import Block, records_alive
from amc.graph.discover import LayerGraph
from amc.progress import progress_bar
from amc.pruning.pruner import prune_model

log = logging.getLogger(__name__)

_CALLS = 10  # module calls per timed run of a table entry
DEVICES = ("cpu", "cuda")
TIMED = ("conv", "depthwise", "linear", "mha", "bn", "norm", "embed", "param", "attention")  # every record type


@dataclass(frozen=True)
class LatencyConfig:
    """How the latency table is measured.

    Attributes:
        batch_size: Batch size the latency is measured (and the budget meant) at.
        threads: CPU threads while timing (None: ``torch.get_num_threads()`` when the table is built).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        grid: Grid points per channel dimension (every count when fewer are reachable).
        min_run_time: Seconds of timing per table entry.
        model_run_time: Seconds of timing per whole-model calibration sample.
        calibration_keeps: Uniform keep ratios of calibration models (the base model is always one).
        calibration_random: Calibration models with random keep ratios in [0.2, 1] (seeded).
        passes: Timing passes over the table, each in a new random order; an entry's median over the
            passes counts.
        calibration_rounds: Interleaved rounds over the calibration models, one short sample of each
            model per round, spread evenly over the table's passes; a model's median over the rounds counts.
        cache_dir: Where tables are cached (None: the base-model cache).
    """

    batch_size: int = 1
    threads: int | None = None
    device: str = "cpu"
    grid: int = 8
    min_run_time: float = 0.03
    model_run_time: float = 0.1
    calibration_keeps: tuple[float, ...] = (0.6, 0.3)
    calibration_random: int = 8
    passes: int = 3
    calibration_rounds: int = 15
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"latency batch size must be a positive integer, got {self.batch_size!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ConfigError(f"latency threads must be a positive integer or None, got {self.threads!r}")
        if self.device not in DEVICES and not re.fullmatch(r"cuda:\d+", str(self.device)):
            raise ConfigError(f"unknown latency device {self.device!r}: use one of {DEVICES} (or cuda:N)")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"latency device {self.device!r} is not available on this machine: use device 'cpu'")
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 2:
            raise ConfigError(f"latency grid must be an integer >= 2, got {self.grid!r}")
        if not self.min_run_time > 0 or not self.model_run_time > 0:
            raise ConfigError("latency min_run_time and model_run_time must be > 0 seconds")
        if any(not 0 < k <= 1 for k in self.calibration_keeps):
            raise ConfigError(f"calibration keep ratios must be in (0, 1], got {self.calibration_keeps!r}")
        for name in ("passes", "calibration_rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"latency {name} must be a positive integer, got {value!r}")
        if self.calibration_random < 0:
            raise ConfigError(f"calibration_random must be >= 0, got {self.calibration_random!r}")

    def resolved_threads(self) -> int:
        return self.threads or torch.get_num_threads()


class LatencyCost(ShapeCost):
    """Predicted latency in ms of the model that keep ratios produce (channel granularity only).

    Build it with :func:`build_latency_cost`. ``base`` is the prediction for the unpruned model, so
    ratios are fractions of the base model's latency. ``measured_base`` is the base model's measured
    latency and ``calibration`` the whole-model measurements the remainder was fitted on.
    """

    resource = "latency"

    def __init__(self, graph: LayerGraph, table: dict, *, config: LatencyConfig) -> None:
        self.config = config
        self.table = table
        self.alpha = float(table["alpha"])
        self.gamma = float(table["gamma"])
        self.measured_base = float(table["measured_base_ms"])
        self.calibration = table["calibration"]
        recs = graph.modules
        # Dense tables over every reachable (out, in) count, flattened into one array.
        dense, offsets, lo_out, lo_in, strides, hi_out, hi_in = [], [], [], [], [], [], []
        size = 0
        for rec, entry in zip(recs, table["modules"]):
            grid = np.asarray(entry["ms"], dtype=np.float64)
            outs = np.asarray(entry["out_grid"], dtype=np.float64)
            ins = np.asarray(entry["in_grid"], dtype=np.float64)
            out_range = np.arange(int(outs[0]), int(outs[-1]) + 1)
            in_range = np.arange(int(ins[0]), int(ins[-1]) + 1)
            full = bilinear(grid, outs, ins, out_range, in_range)
            dense.append(full.ravel())
            offsets.append(size)
            size += full.size
            lo_out.append(out_range[0])
            hi_out.append(out_range[-1])
            lo_in.append(in_range[0])
            hi_in.append(in_range[-1])
            strides.append(len(in_range))
        self._dense = np.concatenate(dense)
        self._offsets = np.array(offsets)
        self._lo_out, self._hi_out = np.array(lo_out, dtype=np.float64), np.array(hi_out, dtype=np.float64)
        self._lo_in, self._hi_in = np.array(lo_in, dtype=np.float64), np.array(hi_in, dtype=np.float64)
        self._strides = np.array(strides)
        self._alive: np.ndarray | None = None  # (M,) 0 for a module of a dropped block (see without_records)
        super().__init__(graph)  # sets ``base`` from the tables above

    def without_records(self, alive: np.ndarray) -> LatencyCost:
        """This model with the modules where ``alive`` is 0 out of the forward pass (the modules of dropped
        blocks, replaced by the identity): their table entries count nothing, whatever their widths.

        ``base`` stays the unpruned model's prediction (ratios and budgets remain fractions of it).
        """
        alive = np.asarray(alive, dtype=np.float64)
        if alive.shape != (len(self.graph.modules),):
            raise ValueError(f"expected one weight per module record ({len(self.graph.modules)}), got {alive.shape}")
        hit = copy.copy(self)
        hit._alive = alive if self._alive is None else self._alive * alive
        hit._form, hit._coupling, hit._candidate_cache = None, None, {}
        return hit

    def value_shapes(self, out: np.ndarray, inp: np.ndarray) -> float:
        return float(self._curve(out[:, None], inp[:, None])[0])

    def _curve(self, out: np.ndarray, inp: np.ndarray) -> np.ndarray:
        o = np.clip(np.rint(out), self._lo_out[:, None], self._hi_out[:, None]) - self._lo_out[:, None]
        i = np.clip(np.rint(inp), self._lo_in[:, None], self._hi_in[:, None]) - self._lo_in[:, None]
        index = self._offsets[:, None] + o.astype(np.int64) * self._strides[:, None] + i.astype(np.int64)
        entries = self._dense[index]  # (M, N)
        if self._alive is not None:
            entries = entries * self._alive[:, None]
        return self.gamma * entries.sum(0) + self.alpha

    def table_sum(self, channels: Sequence[int]) -> float:
        """Sum of the per-module table entries alone (no calibrated remainder)."""
        out, inp = self._shapes(np.asarray(channels, dtype=np.float64))
        return float((self._curve(out[:, None], inp[:, None])[0] - self.alpha) / self.gamma)


def _measure_entries(entries: list[TableEntry], config: LatencyConfig, progress: bool,
                     calibration: _Calibration | None = None) -> list[dict]:
    """Times every table entry in ``config.passes`` passes; with ``calibration``, its interleaved rounds are
    spread evenly over the same passes, so whole models and table entries are timed over the same minutes."""
    threads = config.resolved_threads()
    points = sorted({(e.config, o, i) for e in entries for o in e.out_grid for i in e.in_grid}, key=repr)
    timed: dict[tuple, list[float]] = {key: [] for key in points}
    rng = np.random.default_rng(0)
    steps = len(points) * config.passes
    rounds = config.calibration_rounds if calibration is not None else 0
    # rounds due before each step: centred in equal shares of the steps (all at the end only for an empty table)
    due = np.bincount((2 * np.arange(rounds) + 1) * steps // max(1, 2 * rounds), minlength=steps + 1)
    with progress_bar(enabled=progress) as bar, freed_memory_kept():
        task = bar.add_task(f"latency table (batch {config.batch_size})", total=steps, status="")
        calibrating = bar.add_task("latency calibration", total=rounds * len(calibration.models),
                                   status="") if calibration is not None else None
        step = 0
        # Each pass visits the points in a new random order, so a fast or slow spell of the machine that is
        # shorter than a pass (this VM switches between speeds 30-60% apart, for seconds to minutes) hits
        # each point in at most one pass, and the median over passes ignores it. The calibration rounds run
        # between the points, spread over all passes, so a spell hits few of them too.
        for _ in range(config.passes):
            for index in rng.permutation(len(points)):
                for _ in range(due[step]):
                    calibration.round(lambda: bar.advance(calibrating))
                key = points[index]
                module, shape = standalone_module(*key)
                module = module.eval().to(config.device)
                x = torch.randn(config.batch_size, *shape, device=config.device)
                timer = timing.make_timer(lambda m=module, x=x: m(x), threads, calls=_CALLS)
                ms = 1e3 * timer.blocked_autorange(min_run_time=config.min_run_time).median / _CALLS
                timed[key].append(ms)
                bar.advance(task)
                step += 1
        for _ in range(due[steps]):  # only when the table has no entries
            calibration.round(lambda: bar.advance(calibrating))
    return [{"name": e.name, "out_grid": list(e.out_grid), "in_grid": list(e.in_grid),
             "ms": [[statistics.median(timed[(e.config, o, i)]) for i in e.in_grid] for o in e.out_grid]}
            for e in entries]


class _Calibration:
    """The whole models the table's remainder is fitted on: the base model, uniformly pruned ones and a few
    random ones, timed one interleaved round at a time (:meth:`round`); a model's median over rounds counts.

    With ``blocks`` (depth pruning) there are models with dropped blocks too: every outermost block dropped at
    full width, and ``max(2, calibration_random // 2)`` random widths each dropping a random half of them.
    """

    def __init__(self, model: nn.Module, graph: LayerGraph, config: LatencyConfig, blocks: Sequence[Block] = ()) -> None:
        from amc.pruning.depth import drop_blocks, outermost

        self.graph, self.config = graph, config
        rng = np.random.default_rng(0)
        self.policies = [[k] * len(graph) for k in (1.0, *config.calibration_keeps)]
        self.policies += rng.uniform(0.2, 1.0, (config.calibration_random, len(graph))).tolist()
        self.dropped: list[tuple[str, ...]] = [()] * len(self.policies)
        self.blocks = list(blocks)
        if self.blocks:
            names = [b.name for b in outermost(self.blocks, [b.name for b in self.blocks])]
            self.policies.append([1.0] * len(graph))
            self.dropped.append(tuple(names))
            for _ in range(max(2, config.calibration_random // 2)):
                chosen = [n for n in names if rng.random() < 0.5] or [names[int(rng.integers(len(names)))]]
                self.policies.append(rng.uniform(0.2, 1.0, len(graph)).tolist())
                self.dropped.append(tuple(chosen))
        self.models = [drop_blocks(copy.deepcopy(model) if min(r) == 1.0 else prune_model(model, graph, r), d,
                                   inplace=True) for r, d in zip(self.policies, self.dropped)]
        self.samples: list[list[float]] = [[] for _ in self.models]

    def round(self, on_model=lambda: None) -> None:
        """One short sample of every model, in order."""
        for i, pruned in enumerate(self.models):
            self.samples[i].append(measure_model_latency(
                pruned, self.graph.input_shape, batch_size=self.config.batch_size,
                threads=self.config.resolved_threads(), device=self.config.device,
                min_run_time=self.config.model_run_time))
            on_model()

    def fit(self, modules_table: list[dict]) -> dict:
        """Fits ``measured = gamma * table + alpha`` to the models' medians (call after the rounds)."""
        raw = LatencyCost(self.graph, {"modules": modules_table, "alpha": 0.0, "gamma": 1.0, "measured_base_ms": 0.0,
                                       "calibration": []}, config=self.config)
        points = []
        for ratios, dropped, values in zip(self.policies, self.dropped, self.samples):
            table = raw.without_records(self._alive(dropped)) if dropped else raw
            point = {"keep": ratios, "measured_ms": statistics.median(values),
                     "table_ms": table.table_sum(self.graph.channels(ratios))}
            if dropped:
                point["dropped"] = list(dropped)
            points.append(point)
        alpha, gamma = _fit_remainder(points)
        return {"alpha": alpha, "gamma": gamma, "measured_base_ms": points[0]["measured_ms"], "calibration": points}

    def _alive(self, dropped: Sequence[str]) -> np.ndarray:
        return np.array(records_alive(self.graph, [b for b in self.blocks if b.name in set(dropped)]))


def _fit_remainder(points: list[dict]) -> tuple[float, float]:
    """Least squares for ``measured = gamma * table + alpha`` through the first point; returns (alpha, gamma).

    ``points[0]`` is the unpruned model: every ratio, and so every budget, is a fraction of its latency, so
    the fit passes through its measurement exactly. A free fit missed it by 0.2-2.6% (the unpruned model runs
    a little faster than its table predicts), which biased every predicted ratio low by as much.
    ``gamma`` corrects what timing modules alone misses in a whole forward pass (activations, residual
    additions, caches); ``alpha`` is the fixed cost of a forward pass. Both are >= 0 (a negative overhead
    would let a tiny model cost less than nothing). With few, noisy measurements two terms fit more robustly
    than more would (an extra activation-count term overfitted the noise of this project's VM).
    """
    measured = np.array([p["measured_ms"] for p in points])
    table = np.array([p["table_ms"] for p in points])
    d_measured, d_table = measured[1:] - measured[0], table[1:] - table[0]
    spread = float(np.dot(d_table, d_table))
    gamma = float(np.dot(d_table, d_measured)) / spread if spread > 0 else 0.0
    gamma = min(gamma, measured[0] / table[0])  # alpha = measured[0] - gamma * table[0] >= 0
    if gamma <= 0:  # degenerate (measurements all alike, or falling as the table grows): the base's own scale
        gamma = measured[0] / table[0]
    # At the cap, measured[0] - (measured[0] / table[0]) * table[0] can round to -2e-16: a table _load refuses.
    return max(0.0, float(measured[0] - gamma * table[0])), float(gamma)


def build_latency_cost(model: nn.Module, graph: LayerGraph, config: LatencyConfig = LatencyConfig(), *,
                       progress: bool = True, use_cache: bool = True, blocks: Sequence[Block] = ()) -> LatencyCost:
    """Loads the cached latency table of ``model`` or measures it (with a progress bar), then builds the cost.

    The model is timed as it is: call it on an otherwise idle machine, with the thread count and device
    the pruned model will run with. ``blocks`` (depth pruning, :func:`~amc.graph.blocks.find_blocks`): the
    calibration also times models with some of them dropped (cost such models with
    :class:`~amc.pruning.depth.DepthCost`).
    """
    untimed = [f"{r.name!r} ({r.type})" for r in graph.modules if r.type not in TIMED]
    if untimed:
        raise ConfigError(f"latency tables time {', '.join(TIMED)} records, not {', '.join(untimed[:3])}"
                          f"{' ...' if len(untimed) > 3 else ''}: use --resource flops or params for this model")
    entries, _ = table_entries(model, graph, config.grid)
    key = _cache_key(graph, config, entries, blocks)
    path = cache_path(graph, config, blocks)
    table = _load(path, key, entries) if use_cache else None
    if table is not None:
        log.info("loaded latency table %s", path)
        return LatencyCost(graph, table, config=config)
    start = time.perf_counter()
    log.info("measuring the latency table of %s at batch %d with %d thread(s) on %s", graph.fingerprint,
             config.batch_size, config.resolved_threads(), key["device"])
    calibration = _Calibration(model, graph, config, blocks)
    modules_table = _measure_entries(entries, config, progress, calibration)
    table = {"key": key, "modules": modules_table, **calibration.fit(modules_table)}
    table["seconds"] = time.perf_counter() - start
    log.info("latency table built in %.1f s (base model %.3f ms measured)", table["seconds"],
             table["measured_base_ms"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(table))
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written table
    return LatencyCost(graph, table, config=config)


__all__ = ["LatencyConfig", "LatencyCost", "build_latency_cost", "cache_path"]
