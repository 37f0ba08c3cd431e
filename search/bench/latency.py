"""Latency-model accuracy (``scripts/bench.py latency``): predicted against measured whole-model latency.

For each model and batch size the lookup table is built from scratch (timed; then loaded again from the
cache, timed), and random feasible policies are pruned and timed. The base model and all policies
are timed in the same interleaved rounds (median of repeats), so a spell of the machine hits all alike.
Two errors are reported per policy: of the predicted latency in ms, and of the predicted latency
*ratio* (what the budget constrains) against the measured ratio pruned / base.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from amc.cost.latency import LatencyConfig, build_latency_cost
from amc.cost.timing import compare_latency
from amc.graph.discover import discover
from amc.models import build_model
from amc.pruning.pruner import prune_model
from envs.projection import BudgetProjector
from search.bench.markdown import ResultTable, update_section


@dataclass(frozen=True)
class PolicyLatency:
    budget: float
    predicted_ms: float
    measured_ms: float
    predicted_ratio: float
    measured_ratio: float

    @property
    def error(self) -> float:
        return self.predicted_ms / self.measured_ms - 1

    @property
    def ratio_error(self) -> float:
        return self.predicted_ratio / self.measured_ratio - 1


@dataclass(frozen=True)
class LatencyRow:
    model: str
    batch_size: int
    threads: int
    decisions: int
    build_seconds: float
    cached_seconds: float
    base_measured_ms: float  # when the table was calibrated
    base_predicted_ms: float
    base_now_ms: float  # timed with the policies

    @property
    def base_drift(self) -> float:
        """The machine's drift since calibration: the unpruned model now against its calibration timing
        (negative: faster now). Same sign as the search's ``base_latency_drift``."""
        return self.base_now_ms / self.base_measured_ms - 1
    policies: tuple[PolicyLatency, ...]

    @property
    def median_error(self) -> float:
        return statistics.median(abs(p.error) for p in self.policies)

    @property
    def worst_error(self) -> float:
        return max(abs(p.error) for p in self.policies)

    @property
    def median_ratio_error(self) -> float:
        return statistics.median(abs(p.ratio_error) for p in self.policies)

    @property
    def worst_ratio_error(self) -> float:
        return max(abs(p.ratio_error) for p in self.policies)


def latency_accuracy(models: tuple[str, ...] = ("resnet20", "mobilenetv2"), batches: tuple[int, ...] = (1, 64), *,
                     policies: int = 20, threads: int = 1, repeats: int = 15, sample_time: float = 0.06,
                     round_to: int = 1, seed: int = 0, table: dict | None = None,
                     on_policy: Callable[[str, int, PolicyLatency], None] | None = None) -> Iterator[LatencyRow]:
    """Yields one :class:`LatencyRow` per (model, batch size); tables go to a fresh temporary cache.

    ``table``: :class:`LatencyConfig` settings other than batch size, threads and cache (tests shrink them).
    """
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="amc-latency-bench-") as cache_dir:
        for name in models:
            torch.manual_seed(seed)
            model = build_model(name, in_channels=1, num_classes=10).eval()
            graph = discover(model, torch.zeros(1, 1, 28, 28), round_to=round_to)
            for batch in batches:
                config = LatencyConfig(batch_size=batch, threads=threads, cache_dir=cache_dir, **(table or {}))
                start = time.perf_counter()
                build_latency_cost(model, graph, config)
                built = time.perf_counter() - start
                start = time.perf_counter()
                cost = build_latency_cost(model, graph, config)  # from the cache
                cached = time.perf_counter() - start
                rng = np.random.default_rng(seed + 1)  # not the calibration's seed
                smallest = BudgetProjector(cost, 1.0).smallest_budget
                drawn = []
                for _ in range(policies):
                    budget = float(rng.uniform(min(smallest + 0.02, 0.95), 0.95))
                    keep = BudgetProjector(cost, budget).project(rng.uniform(0.2, 1.0, len(graph)).tolist())
                    drawn.append((budget, keep))
                # All policies and the base in the same interleaved rounds: each model's samples spread over
                # the whole measurement, so a fast or slow spell of the machine moves no model's median.
                timed = {"base": model, **{f"policy{i}": prune_model(model, graph, keep)
                                           for i, (_, keep) in enumerate(drawn)}}
                measured = compare_latency(timed, graph.input_shape, batch_size=batch, threads=threads,
                                           repeats=repeats, min_run_time=sample_time)
                rows = []
                for i, (budget, keep) in enumerate(drawn):
                    ms = measured[f"policy{i}"]
                    row = PolicyLatency(budget, cost.cost(keep), ms, cost.ratio(keep), ms / measured["base"])
                    rows.append(row)
                    if on_policy:
                        on_policy(name, batch, row)
                yield LatencyRow(name, batch, threads, len(graph), built, cached, cost.measured_base, cost.base,
                                 measured["base"], tuple(rows))


def latency_report(*, models: tuple[str, ...], batches: tuple[int, ...], policies: int, threads: int, repeats: int,
                   sample_time: float, round_to: int, command: str, markdown: Path, console: Console) -> None:
    """Runs :func:`latency_accuracy`, prints each policy and the table, writes the ``latency-r<round_to>``
    section of ``markdown``."""

    def on_policy(model, batch, row):
        console.print(f"{model} batch {batch}: budget {row.budget:.2f} predicted {row.predicted_ms:.3f} ms "
                      f"measured {row.measured_ms:.3f} ms ({100 * row.error:+.1f}%), ratio {row.predicted_ratio:.3f} "
                      f"vs {row.measured_ratio:.3f} ({100 * row.ratio_error:+.1f}%)")

    rows = tuple((row.model, str(row.batch_size), str(row.decisions), f"{row.build_seconds:.1f}",
                  f"{row.cached_seconds:.2f}",
                  f"{row.base_measured_ms:.2f}", f"{row.base_now_ms:.2f} ({100 * row.base_drift:+.1f}%)",
                  f"{100 * row.median_error:.1f}%", f"{100 * row.worst_error:.1f}%",
                  f"{100 * row.median_ratio_error:.1f}%", f"{100 * row.worst_ratio_error:.1f}%")
                 for row in latency_accuracy(models, batches, policies=policies, threads=threads, repeats=repeats,
                                             sample_time=sample_time, round_to=round_to, on_policy=on_policy))
    table = ResultTable("latency lookup table: predicted vs measured",
                        ("model", "batch", "decisions", "build s", "cached s", "base ms", "base now",
                         "ms error median", "ms error worst", "ratio error median", "ratio error worst"), rows,
                        console_headers=("model", "batch", "decisions", "build s", "cached s", "base ms", "base now",
                                         "median err", "worst err", "median ratio err", "worst ratio err"))
    console.print(table.rich())
    lines = [f"Command: `{command}`  ",
             f"{policies} random feasible policies per row (random budget, random keep ratios projected onto "
             f"it), {threads} thread(s), round_to {round_to}, untrained weights, 1x28x28 inputs. The "
             f"base model and all policies are timed in the same interleaved rounds: median of {repeats} "
             f"samples of {sample_time:g} s each. "
             "'ms error': predicted vs measured latency; 'ratio error': predicted vs measured latency ratio "
             "(pruned / base), what a budget "
             "constrains. Build: the table measured from scratch; cached: loading it again. 'base now': the unpruned "
             "model timed with the policies, and its change since the table's calibration timed it (the "
             "machine's drift: it shifts every ms error alike and cancels in the ratio).", "",
             *table.markdown()]
    update_section(markdown, f"latency-r{round_to}", "\n".join(lines) + "\n",
                   title=f"Latency lookup table accuracy, round_to {round_to}")
