"""Seeds without process-wide side effects: the global generators are forked, seeded, then put back."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def seeded(seed: int, device: torch.device | str = "cpu", *, host_generators: bool = False) -> Iterator[None]:
    """Runs the block with the CPU's global generator and ``device``'s seeded with ``seed``, then puts them back.

    Initial weights and dropout draw from the global generators; seeding them here, rather than with a
    process-wide ``torch.manual_seed``, keeps training reproducible per seed and leaves the caller's draws
    alone. Only ``device``'s CUDA generator is forked: CUDA is not started for a model on the CPU.

    Args:
        seed: The seed.
        device: Where the block's model runs.
        host_generators: Also put numpy's and Python's global generators back afterwards (libraries such as
            stable-baselines3 re-seed them).
    """
    device = torch.device(device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    numpy_state, python_state = (np.random.get_state(), random.getstate()) if host_generators else (None, None)
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        try:
            yield
        finally:
            if host_generators:
                np.random.set_state(numpy_state)
                random.setstate(python_state)
