"""Base model against pruned model: parameters, FLOPs, file size, measured latency, accuracy."""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils import benchmark
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode

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


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], *, batch: int, min_run_time: float = 1.0,
                    threads: int | None = None) -> float:
    """Median forward latency in ms of ``model`` on a ``(batch, *input_shape)`` input."""
    model = model.eval()
    x = torch.randn(batch, *input_shape)
    timer = benchmark.Timer(stmt="with torch.no_grad(): model(x)", globals={"model": model, "x": x, "torch": torch},
                            num_threads=threads or torch.get_num_threads())
    return 1e3 * timer.blocked_autorange(min_run_time=min_run_time).median


def model_stats(name: str, model: nn.Module, test: Dataset, *, batches: tuple[int, ...] = (1, 64),
                min_run_time: float = 1.0, test_accuracy: float | None = None) -> ModelStats:
    """The model's size, FLOPs, latency and test accuracy, all measured on the CPU (a GPU model is copied there).

    ``test_accuracy``: the model's accuracy on ``test`` when the caller has measured it already (it is not
    measured again).
    """
    if any(p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).cpu()
    model = model.eval()
    shape = tuple(test[0][0].shape)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return ModelStats(
        name=name,
        params=sum(p.numel() for p in model.parameters()),
        flops=counter.get_total_flops(),
        size_bytes=buffer.getbuffer().nbytes,
        latency_ms={b: measure_latency(model, shape, batch=b, min_run_time=min_run_time) for b in batches},
        test_accuracy=accuracy(model, test) if test_accuracy is None else test_accuracy,
    )
