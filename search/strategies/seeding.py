"""Seeds for a search without process-wide side effects: the global generators are forked, then put back."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def seeded_generators(seed: int, *, device: str = "cpu") -> Iterator[None]:
    """Runs the block with torch's global generator seeded with ``seed``, and puts every global generator back
    after it (torch's, and a cuda device's; numpy's and Python's, which SB3 re-seeds): no seed is set
    process-wide.

    Args:
        seed: The search seed.
        device: The run's device; for ``cuda`` the GPUs' generators are seeded and restored too.
    """
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if cuda else []):
        if cuda:
            torch.manual_seed(seed)
        else:  # torch.manual_seed would also queue a seed for the GPUs, applied whenever CUDA starts
            torch.random.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)
