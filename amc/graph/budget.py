"""A time budget for layer discovery: Torch-Pruning's graph walks can run for many minutes on some models
(its ``get_pruning_group`` spent 25 minutes on a tiny Llama, torchvision's Swin over 15), and a user
should get a one-line refusal instead of a hang.

The budget is checked on every Python function call of the discovering thread (``sys.settrace``, chained
to a tracer already installed, such as coverage's), so it works in any thread, needs no signal and stops
pure-Python loops wherever they are. It cannot interrupt one long C++ operator, which discovery does not run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

DEFAULT_SECONDS = 300.0  # discovery of torchvision's ResNet-152 takes seconds; 5 minutes is a hang


class Overtime(BaseException):
    """Raised inside the discovering code when its time budget is spent (turned into a one-line refusal).

    A ``BaseException``, so the ``except Exception`` around Torch-Pruning calls does not swallow it."""


@contextmanager
def time_budget(seconds: float | None) -> Iterator[None]:
    """Raises :class:`Overtime` in the code run inside once ``seconds`` have passed (None: no budget)."""
    if seconds is None:
        yield
        return
    deadline = time.monotonic() + seconds
    previous = sys.gettrace()
    clock = time.monotonic

    spent = [False]

    def tracer(frame, event, arg):
        if event == "call" and not spent[0] and clock() > deadline:
            spent[0] = True  # once: the cleanup on the way out (finally blocks) runs normally
            raise Overtime
        return previous(frame, event, arg) if previous is not None else None

    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(previous)
