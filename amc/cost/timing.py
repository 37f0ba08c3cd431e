"""Timing models on the device: what the latency table (:mod:`amc.cost.latency`) and the reports measure with,
and when a timing is not to be read as a fact (:func:`timing_doubts`: a large spread over repeats, or a
latency ratio the FLOPs ratio cannot explain).

Every timing runs inside :func:`freed_memory_kept`, which stops glibc from returning freed activations to
the OS for its duration only: the malloc settings are restored when the outermost timing ends.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import logging
import os
import platform
import statistics
import threading
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils import benchmark

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)
_KEPT_BYTES = 1 << 30
_GLIBC_DEFAULT_BYTES = 128 * 1024  # DEFAULT_MMAP_THRESHOLD_MIN and DEFAULT_TRIM_THRESHOLD of glibc
_ENVIRONMENT = {_M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_", _M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_"}


class _MallocScope:
    """Counts the nested :func:`freed_memory_kept` scopes of the process (timings nest: a table build times
    whole models too), so only the outermost one sets and restores the settings."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.applied = False


_SCOPE = _MallocScope()


def _mallopt(values: dict[int, int]) -> bool:
    """Sets glibc malloc parameters; whether every one applied (False off Linux or without glibc)."""
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        applied = [bool(libc.mallopt(param, value)) for param, value in values.items()]  # every one, even after a failure
        return all(applied)
    except (OSError, AttributeError):
        log.debug("mallopt unavailable; latency measurements may include page-fault noise")
        return False


def _restored_values() -> dict[int, int]:
    """What the process ran with before: the user's ``MALLOC_*_THRESHOLD_`` variables, else glibc's defaults."""
    values = {}
    for param, variable in _ENVIRONMENT.items():
        text = os.environ.get(variable, "")
        values[param] = int(text) if text.isdigit() else _GLIBC_DEFAULT_BYTES
    return values


@contextlib.contextmanager
def freed_memory_kept() -> Iterator[bool]:
    """Within the block, glibc keeps large freed blocks instead of returning them to the OS (Linux only).

    By default each large activation is ``mmap``-ed and unmapped again, so every forward pass pays page
    faults: on this project's 2-core VM that made batch-64 latency bimodal (50-75 ms for a model that
    runs in 33-41 ms without them). PyTorch's CPU tuning guide recommends jemalloc or tcmalloc for the
    same reason; this is the equivalent of ``MALLOC_MMAP_THRESHOLD_=1G MALLOC_TRIM_THRESHOLD_=1G``.
    Deploy the pruned model with one of them to see the measured latency.

    On leaving the outermost block both thresholds go back to the ``MALLOC_*_THRESHOLD_`` environment
    variables, or glibc's 128 KiB defaults (fixed from then on: glibc's dynamic mmap threshold, which grows
    with the blocks a process frees, stays off once any threshold was set). Nested blocks share one setting.

    Yields:
        Whether the settings applied.
    """
    with _SCOPE.lock:
        if _SCOPE.depth == 0:
            _SCOPE.applied = _mallopt({_M_MMAP_THRESHOLD: _KEPT_BYTES, _M_TRIM_THRESHOLD: _KEPT_BYTES})
        _SCOPE.depth += 1
        applied = _SCOPE.applied
    try:
        yield applied
    finally:
        with _SCOPE.lock:
            _SCOPE.depth -= 1
            if _SCOPE.depth == 0 and _SCOPE.applied:
                _mallopt(_restored_values())
                _SCOPE.applied = False


def device_name(device: str = "cpu") -> str:
    """A description of the timing device that goes into the cache key."""
    if device.startswith("cuda"):
        return f"cuda:{torch.cuda.get_device_name(torch.device(device))}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu:{model}:{os.cpu_count()} cores"


def make_timer(fn: Callable[[], object], threads: int | None, calls: int = 1) -> benchmark.Timer:
    """A ``torch.utils.benchmark`` timer of ``calls`` calls of ``fn`` per run, in inference mode (more calls
    amortise the timer's own overhead)."""
    def run() -> None:
        with torch.inference_mode():
            for _ in range(calls):
                fn()

    return benchmark.Timer(stmt="run()", globals={"run": run}, num_threads=threads or torch.get_num_threads())


def measure_model_latency(model: nn.Module, input_shape: Sequence[int], *, batch_size: int = 1,
                          threads: int | None = None, device: str = "cpu", min_run_time: float = 0.4) -> float:
    """Median forward latency of ``model`` in ms on a random ``(batch_size, *input_shape)`` input."""
    with freed_memory_kept():
        if device != "cpu":
            model = copy.deepcopy(model).to(device)  # never move the caller's model
        try:
            model.eval()
        except NotImplementedError:  # a torch.export program (always in inference form)
            pass
        x = torch.randn(batch_size, *input_shape, device=device)
        return 1e3 * make_timer(lambda: model(x), threads).blocked_autorange(min_run_time=min_run_time).median


def compare_latency_samples(models: dict[str, nn.Module], input_shape: Sequence[int], *, batch_size: int = 1,
                            threads: int | None = None, device: str = "cpu", repeats: int = 5,
                            min_run_time: float = 0.4) -> dict[str, list[float]]:
    """Every one of ``repeats`` interleaved measurements of each model (ms), so drift hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in models}
    with freed_memory_kept():
        for _ in range(repeats):
            for name, model in models.items():
                samples[name].append(measure_model_latency(model, input_shape, batch_size=batch_size,
                                                           threads=threads, device=device, min_run_time=min_run_time))
    return samples


def compare_latency(models: dict[str, nn.Module], input_shape: Sequence[int], *, batch_size: int = 1,
                    threads: int | None = None, device: str = "cpu", repeats: int = 5,
                    min_run_time: float = 0.4) -> dict[str, float]:
    """Median over ``repeats`` interleaved measurements of each model (ms), so drift hits all alike."""
    samples = compare_latency_samples(models, input_shape, batch_size=batch_size, threads=threads, device=device,
                                      repeats=repeats, min_run_time=min_run_time)
    return {name: statistics.median(values) for name, values in samples.items()}


# When a timing is not to be taken as a fact (:func:`timing_doubts`).
SPREAD_LIMIT = 0.5  # (max - min) / median of repeated measurements: the load changed while timing
LOW_RATIO = 0.5  # latency ratio under half the FLOPs ratio: faster than the removed work allows
HIGH_RATIO = 2.0  # latency ratio over twice the FLOPs ratio ...
SLOWER = 1.15  # ... with the pruned model more than this much slower than the base (per-call overhead explains
# a ratio near 1 at small batches, where a small model's time is mostly the framework's, not a slower one)
TIMING_HINT = ("to time reliably: an otherwise idle machine, one torch thread per process (--threads 1), and more "
               "or longer repeats")


def spread(samples: Sequence[float]) -> float:
    """``(max - min) / median`` of repeated measurements (0 for fewer than two)."""
    if len(samples) < 2:
        return 0.0
    median = statistics.median(samples)
    return (max(samples) - min(samples)) / median if median > 0 else float("inf")


def timing_doubts(*, label: str, base_ms: float, pruned_ms: float, flops_ratio: float | None,
                  base_spread: float = 0.0, pruned_spread: float = 0.0) -> list[str]:
    """Why a base/pruned timing should not be shown as a fact: one line each (empty: plausible).

    Args:
        label: What was timed (``"batch 64"``), for the messages.
        base_ms, pruned_ms: The two medians.
        flops_ratio: Pruned over base FLOPs (None: the ratio is not checked).
        base_spread, pruned_spread: :func:`spread` of each model's repeated measurements.
    """
    doubts = [f"the {name} model's latency at {label} varied by {value:.0%} of its median over the repeats: the "
              "machine's load changed while timing"
              for name, value in (("base", base_spread), ("pruned", pruned_spread)) if value > SPREAD_LIMIT]
    if flops_ratio is not None and flops_ratio > 0 and base_ms > 0:
        ratio = pruned_ms / base_ms
        if ratio < LOW_RATIO * flops_ratio:
            doubts.append(f"latency ratio {ratio:.3f} at {label} ({pruned_ms:.3f} / {base_ms:.3f} ms) for a FLOPs "
                          f"ratio of {flops_ratio:.3f}: faster than the removed work allows, one of the timings is off")
        elif ratio > max(HIGH_RATIO * flops_ratio, SLOWER):
            doubts.append(f"latency ratio {ratio:.3f} at {label} ({pruned_ms:.3f} / {base_ms:.3f} ms) for a FLOPs "
                          f"ratio of {flops_ratio:.3f}: the pruned model measured slower than the base (odd channel "
                          "counts can run slowly: --round-to 8)")
    return doubts


__all__ = ["HIGH_RATIO", "LOW_RATIO", "SLOWER", "SPREAD_LIMIT", "TIMING_HINT", "compare_latency",
           "compare_latency_samples", "device_name", "freed_memory_kept", "make_timer", "measure_model_latency",
           "spread", "timing_doubts"]
