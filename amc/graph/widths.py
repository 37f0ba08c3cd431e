"""Keep ratio -> channels or weights: the one rounding rule.

Shared by the cost models, the pruner, the environment's projection and the exported policy, so a
policy's reported cost is the cost of the model it produces. Scalar and vectorised forms compute the same
numbers (the vectorised ones are what the environment runs every step).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from amc.errors import ConfigError

GRANULARITIES = ("channel", "weight")
# Keeps 0.3 * 10 = 3.0000000000000004 from rounding up to 4.
SLACK = 1e-9


def channels_for(keep: float, out_channels: int, round_to: int = 1, *, name: str = "layer") -> int:
    """The channel-rounding rule: ``max(round_to, round_up(keep * n, round_to))``, capped at n; never 0.

    Raises:
        ConfigError: ``keep`` is not in (0, 1], or ``round_to`` is below 1.
    """
    if isinstance(keep, bool) or not isinstance(keep, numbers.Real) or math.isnan(keep) or not 0.0 < keep <= 1.0:
        raise ConfigError(f"keep ratio of {name!r} must be a number in (0, 1], got {keep!r}")
    if round_to < 1:
        raise ConfigError(f"round_to must be a positive integer, got {round_to!r}")
    return rounded_channels(float(keep), out_channels, round_to)


def rounded_channels(keep: float, out_channels: int, round_to: int = 1) -> int:
    """:func:`channels_for` without its checks, for a ``keep`` known valid (the environment's every step)."""
    wanted = math.ceil(keep * out_channels / round_to - SLACK) * round_to
    return min(out_channels, max(round_to, wanted))


def rounded_channels_array(keep: np.ndarray | float, n: np.ndarray | float, round_to: int) -> np.ndarray:
    """Vectorised :func:`rounded_channels` (float64; in place on the product where it can)."""
    wanted = np.multiply(keep, n)
    if not isinstance(wanted, np.ndarray) or wanted.dtype != np.float64:  # scalars, integer counts
        return np.minimum(n, np.maximum(round_to, np.ceil(wanted / round_to - SLACK) * round_to))
    # In place, the same operations as ceil(keep * n / r - SLACK) * r clipped to [r, n] (x / 1 == x exactly).
    if round_to != 1:
        wanted /= round_to
    wanted -= SLACK
    np.ceil(wanted, out=wanted)
    if round_to != 1:
        wanted *= round_to
    np.maximum(wanted, round_to, out=wanted)
    return np.minimum(wanted, n, out=wanted)


def weights_kept(keep: float, numel: int) -> int:
    """Number of weights unstructured pruning keeps in a tensor: ``ceil(keep * numel)``, at least 1."""
    return max(1, min(numel, math.ceil(keep * numel - SLACK)))


def weights_kept_array(keep: np.ndarray, numel: np.ndarray) -> np.ndarray:
    """Vectorised :func:`weights_kept` (broadcasts ``keep`` against ``numel``)."""
    return np.clip(np.ceil(keep * numel - SLACK), 1, numel)
