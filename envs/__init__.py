"""Gymnasium environment for layer-by-layer pruning decisions.

``amc/ChannelPruning-v0`` is registered on import. Build it from names (this trains and caches the
base model on first use)::

    import envs
    env = envs.make_env(model="cnn", dataset="digits", budget=0.3)   # max_episode_steps = #layers (+ #blocks with depth=True)

or with ``gymnasium.make("amc/ChannelPruning-v0", model="cnn", dataset="digits", budget=0.3,
max_episode_steps=N)``, or from parts you built yourself
(``gymnasium.make(ENV_ID, graph=graph, cost_model=cost, evaluator=evaluator, budget=0.3)``).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Any

import gymnasium as gym

from amc.errors import ConfigError
from envs.rewards import REWARDS, RewardInput, get_reward

if TYPE_CHECKING:
    from envs.projection import BudgetProjector, check_budget
    from envs.pruning_env import OBS_FEATURES, PruningEnv

ENV_ID = "amc/ChannelPruning-v0"
# Imported on first use (PEP 562): ``envs.rewards`` and the registration stay free of torch, so the
# command lines can list the rewards without importing it.
_LAZY = {"BudgetProjector": "envs.projection", "check_budget": "envs.projection", "OBS_FEATURES": "envs.pruning_env",
         "PruningEnv": "envs.pruning_env", "check_render_mode": "envs.pruning_env"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'envs' has no attribute {name!r}")


def _entry_point(**kwargs: Any) -> PruningEnv:
    """Gymnasium entry point: from ready parts (``graph=...``) or from names (``model=...``)."""
    from envs.pruning_env import PruningEnv, check_render_mode

    if "graph" in kwargs:
        return PruningEnv(**kwargs)
    from amc.context import ContextConfig, build_context
    from amc.evaluation.evaluator import EvalConfig

    env_keys = ("budget", "min_keep", "max_keep", "reward", "clip", "render_mode")
    env_kwargs = {k: kwargs.pop(k) for k in env_keys if k in kwargs}
    eval_fields = {f.name for f in dataclasses.fields(EvalConfig)}
    eval_cfg = kwargs.pop("eval", None) or EvalConfig()
    eval_cfg = dataclasses.replace(eval_cfg, **{k: kwargs.pop(k) for k in list(kwargs) if k in eval_fields})
    context_fields = {f.name for f in dataclasses.fields(ContextConfig)}
    unknown = sorted(set(kwargs) - context_fields)
    if unknown:
        raise ConfigError(f"unknown argument(s) {unknown} for {ENV_ID}; use PruningEnv, ContextConfig or "
                          "EvalConfig field names")
    check_render_mode(env_kwargs.get("render_mode"), PruningEnv.metadata["render_modes"])  # before any training
    ctx = build_context(ContextConfig(eval=eval_cfg, **kwargs), progress=False)
    return PruningEnv(ctx.graph, ctx.cost_model(), ctx.evaluator, criterion=eval_cfg.criterion,
                      granularity=eval_cfg.granularity, **env_kwargs)


def make_env(**kwargs: Any) -> gym.Env:
    """``gymnasium.make(ENV_ID, ...)`` with ``max_episode_steps`` set to the number of layers."""
    env = _entry_point(**kwargs)
    return gym.make(ENV_ID, graph=env.graph, cost_model=env.cost_model, evaluator=env.evaluator,
                    budget=env.budget, min_keep=env.min_keep, max_keep=env.max_keep, reward=env.reward_name,
                    clip=env.clip, criterion=env.criterion, granularity=env.granularity,
                    max_episode_steps=env.max_steps)


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="envs:_entry_point")

__all__ = ["ENV_ID", "OBS_FEATURES", "REWARDS", "BudgetProjector", "PruningEnv", "RewardInput", "check_budget",
           "get_reward", "make_env"]
