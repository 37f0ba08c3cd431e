"""What the benchmarks share: the ``finetune`` and ``headline`` setting (resnet20 on fashion-mnist), the machine line.

The base model is trained once (15 epochs on 55,000 images, about 30-40 min on the 2-core machine) and
cached like any base model; every later benchmark run loads it.
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the benchmark CLIs refuse bad arguments before torch loads
    from amc.context import ContextConfig

BASE_EPOCHS = 15
VAL_SIZE = 5000  # carved from the 60,000 training images; the search sees the first VAL_LIMIT of them
VAL_LIMIT = 1000


def fashion_resnet20(*, data_dir: str | None = None, round_to: int = 8, val_limit: int | None = VAL_LIMIT,
                     **kwargs) -> ContextConfig:
    """The benchmark context. ``round_to`` 8 (AMC's choice): oneDNN runs channel counts that are
    multiples of 8 much faster than odd ones (see BENCHMARKS.md, latency sections)."""
    from amc.context import ContextConfig
    from amc.data.datasets import DEFAULT_FASHION_MNIST_DIR
    from amc.evaluation.evaluator import EvalConfig
    from amc.train import TrainConfig

    return ContextConfig(model="resnet20", dataset="fashion-mnist", data_dir=data_dir or DEFAULT_FASHION_MNIST_DIR,
                         seed=0, val_size=VAL_SIZE, round_to=round_to, train=TrainConfig(epochs=BASE_EPOCHS),
                         eval=EvalConfig(val_limit=val_limit), **kwargs)


def machine() -> str:
    """The machine line of a benchmark section: device, threads, Python and package versions."""
    from importlib import metadata

    import torch

    from amc.cost.timing import device_name

    versions = ", ".join(f"{name} {metadata.version(name)}" for name in
                         ("torch", "torch-pruning", "optuna", "stable-baselines3", "ray"))
    return f"{device_name()}, {torch.get_num_threads()} torch thread(s); Python {platform.python_version()}, {versions}"


class BenchError(Exception):
    """A benchmark cannot run on its inputs (the CLI reports it on one line, exit code 2)."""
