"""Base model against pruned model: parameters, FLOPs, file size, measured latency, accuracy.

Latencies are medians of a few repeats, interleaved across the compared models (so a change of the
machine's load hits all of them alike); :func:`comparison_doubts` names the timings that should not be read as
facts: a large spread over the repeats, or a latency ratio the FLOPs ratio cannot explain.
"""

from __future__ import annotations

import copy
import io
import statistics
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset

from amc.cost import timing
from amc.graph.probe import counting_flops
from amc.evaluation.metrics import accuracy


@dataclass(frozen=True)
class ModelStats:
    """What a user compares before deploying a pruned model."""

    name: str
    params: int
    flops: int  # per sample, as FlopCounterMode counts them
    size_bytes: int  # of the saved state_dict
    latency_ms: dict[int, float]  # batch size -> median latency (torch.utils.benchmark)
    test_accuracy: float
    latency_spread: dict[int, float] = field(default_factory=dict)  # batch size -> (max - min) / median of repeats


@dataclass(frozen=True)
class TimingDoubt:
    """A latency of the comparison that should not be read as a fact: ``batch`` and why."""

    batch: int
    reason: str


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], *, batch: int, min_run_time: float = 1.0,
                    threads: int | None = None) -> float:
    """Median forward latency in ms of ``model`` on a ``(batch, *input_shape)`` input."""
    return timing.measure_model_latency(model.eval(), input_shape, batch_size=batch, threads=threads,
                                        min_run_time=min_run_time)


def compare_models(models: dict[str, nn.Module], test: Dataset, *, batches: tuple[int, ...] = (1, 64),
                   min_run_time: float = 0.3, repeats: int = 3, threads: int | None = None,
                   test_accuracy: dict[str, float] | None = None) -> list[ModelStats]:
    """Each model's size, FLOPs, latency and test accuracy, all measured on the CPU (a GPU model is copied there).

    Args:
        models: Name -> model, in the table's order.
        test: The test split (its first sample gives the input shape).
        batches: Batch sizes to time (none: no timing).
        min_run_time: Seconds of each timing; every model is timed ``repeats`` times per batch, interleaved.
        repeats: Timings per model and batch (their median is reported, their spread kept).
        threads: Torch threads while timing (None: the process's).
        test_accuracy: Accuracies the caller has measured already (not measured again).
    """
    known = test_accuracy or {}
    cpu = {name: (copy.deepcopy(m).cpu() if any(p.device.type != "cpu" for p in m.parameters()) else m).eval()
           for name, m in models.items()}
    shape = tuple(test[0][0].shape)
    samples = {b: timing.compare_latency_samples(cpu, shape, batch_size=b, threads=threads, repeats=repeats,
                                                 min_run_time=min_run_time) for b in batches}
    stats = []
    for name, model in cpu.items():
        with counting_flops() as counter, torch.no_grad():
            model(torch.zeros(1, *shape))
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        stats.append(ModelStats(
            name=name,
            params=sum(p.numel() for p in model.parameters()),
            flops=counter.get_total_flops(),
            size_bytes=buffer.getbuffer().nbytes,
            latency_ms={b: statistics.median(samples[b][name]) for b in batches},
            test_accuracy=known[name] if name in known else accuracy(model, test),
            latency_spread={b: timing.spread(samples[b][name]) for b in batches},
        ))
    return stats


def model_stats(name: str, model: nn.Module, test: Dataset, *, batches: tuple[int, ...] = (1, 64),
                min_run_time: float = 1.0, test_accuracy: float | None = None, repeats: int = 1) -> ModelStats:
    """One model's :func:`compare_models` row (``test_accuracy``: measured already by the caller).

    Comparing two models, prefer :func:`compare_models`: it times them interleaved.
    """
    known = {} if test_accuracy is None else {name: test_accuracy}
    return compare_models({name: model}, test, batches=batches, min_run_time=min_run_time, repeats=repeats,
                          test_accuracy=known)[0]


def comparison_doubts(base: ModelStats, pruned: ModelStats) -> list[TimingDoubt]:
    """The pruned model's latencies against the base's that should not be read as facts, per batch size.

    A large spread over the repeats, or a latency ratio far from the FLOPs ratio (see
    :func:`amc.cost.timing.timing_doubts`); the remedy is :data:`amc.cost.timing.TIMING_HINT`.
    """
    flops_ratio = pruned.flops / base.flops if base.flops else None
    return [TimingDoubt(batch, reason)
            for batch in sorted(set(base.latency_ms) & set(pruned.latency_ms))
            for reason in timing.timing_doubts(label=f"batch {batch}", base_ms=base.latency_ms[batch],
                                               pruned_ms=pruned.latency_ms[batch], flops_ratio=flops_ratio,
                                               base_spread=base.latency_spread.get(batch, 0.0),
                                               pruned_spread=pruned.latency_spread.get(batch, 0.0))]


TIMING_HINT = timing.TIMING_HINT

__all__ = ["TIMING_HINT", "ModelStats", "TimingDoubt", "compare_models", "comparison_doubts", "measure_latency",
           "model_stats"]
