"""Episode rewards, chosen by name from :data:`REWARDS` (a registry, never ``eval``).

AMC (He et al., 2018, section 3.3): with action clipping every episode meets the budget, so the reward
needs no cost term (``acc``); ``acc_log_flops`` = -error * log(FLOPs) and ``acc_log_params`` =
-error * log(#params) trade accuracy against cost. ``acc_penalty`` is for the unclipped mode, where
an episode may exceed the budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from amc.errors import ConfigError


@dataclass(frozen=True)
class RewardInput:
    """What a reward sees of an evaluated policy."""

    accuracy: float
    cost: float  # absolute, in the environment's resource
    base_cost: float
    budget: float  # fraction of base_cost
    resource: str

    @property
    def cost_ratio(self) -> float:
        return self.cost / self.base_cost


RewardFn = Callable[[RewardInput], float]


def acc(r: RewardInput) -> float:
    """Validation accuracy (AMC's reward for resource-constrained search)."""
    return r.accuracy


def acc_log_flops(r: RewardInput) -> float:
    """``-error * log(FLOPs)`` (AMC's R_FLOPs)."""
    return -(1.0 - r.accuracy) * math.log(r.cost)


def acc_log_params(r: RewardInput) -> float:
    """``-error * log(#params)`` (AMC's R_Param)."""
    return -(1.0 - r.accuracy) * math.log(r.cost)


def acc_penalty(r: RewardInput, weight: float = 2.0) -> float:
    """Accuracy minus ``weight`` x the relative budget overshoot (0 when within budget)."""
    overshoot = max(0.0, r.cost_ratio - r.budget) / r.budget
    return r.accuracy - weight * overshoot


REWARDS: dict[str, RewardFn] = {
    "acc": acc,
    "acc_log_flops": acc_log_flops,
    "acc_log_params": acc_log_params,
    "acc_penalty": acc_penalty,
}
# Rewards that read an absolute cost of one resource only.
_RESOURCE_OF = {"acc_log_flops": "flops", "acc_log_params": "params"}


def get_reward(name: str, *, resource: str) -> RewardFn:
    """The reward named ``name``, checked against the environment's resource."""
    if name not in REWARDS:
        raise ConfigError(f"unknown reward {name!r}: use one of {sorted(REWARDS)}")
    needed = _RESOURCE_OF.get(name)
    if needed is not None and needed != resource:
        raise ConfigError(f"reward {name!r} needs resource {needed!r}, but the environment uses {resource!r}")
    return REWARDS[name]
