"""Search strategies: a :class:`Strategy` base class and a registry by ``--strategy`` name.

One module per family, each class registered where it is defined (:func:`register`):

============  ==========================================================================
name          strategy
============  ==========================================================================
ddpg          AMC's agent (He et al., 2018) on stable-baselines3 (:mod:`.rl.ddpg`)
td3, sac      the same environment with SB3's TD3 and SAC (:mod:`.rl.td3`, :mod:`.rl.sac`)
optuna        an Optuna study: TPE, CMA-ES, random or NSGA-II sampler (:mod:`.optuna_search`)
random        EagleEye's random search (Li et al., 2020) (:mod:`.random_search`)
uniform       the same keep ratio everywhere, the largest within the budget (:mod:`.uniform`)
sensitivity   greedy ratios from per-layer sensitivity curves (:mod:`.sensitivity`)
tp-global     Torch-Pruning's global pruning at the budget (heads for attention models) (:mod:`.tp_global`)
============  ==========================================================================

A family's module is imported on first :func:`get` of one of its names, so :func:`names` (what the
command line offers) costs no torch, SB3 or Optuna import.
"""

from __future__ import annotations

import importlib

from amc.errors import ConfigError
from search.strategies.base import REGISTRY, Strategy, register

# Where each built-in strategy is defined (and registered), in the order the command line lists them.
_HOMES = {
    "ddpg": "search.strategies.rl.ddpg",
    "td3": "search.strategies.rl.td3",
    "sac": "search.strategies.rl.sac",
    "optuna": "search.strategies.optuna_search",
    "random": "search.strategies.random_search",
    "uniform": "search.strategies.uniform",
    "sensitivity": "search.strategies.sensitivity",
    "tp-global": "search.strategies.tp_global",
}


def names() -> tuple[str, ...]:
    """Every strategy name: the built-in ones, then any registered elsewhere."""
    return (*_HOMES, *(name for name in REGISTRY if name not in _HOMES))


def get(name: str) -> type[Strategy]:
    """The strategy class registered under ``name`` (importing its module the first time).

    Raises:
        ConfigError: No strategy has that name.
    """
    if name not in REGISTRY and name in _HOMES:
        importlib.import_module(_HOMES[name])
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown --strategy {name!r}: choose one of {', '.join(names())}") from None


__all__ = ["REGISTRY", "Strategy", "get", "names", "register"]
