"""``td3``: SB3's TD3 (Fujimoto et al., 2018) with AMC's episode reward, exploration and learning rates."""

from __future__ import annotations

from typing import Any

from stable_baselines3 import TD3

from search.strategies.base import register
from search.strategies.rl.common import (ACTOR_LR, NET_ARCH, AMCExploration, SharedNoise, TruncatedNormalNoise,
                                         off_policy_settings)
from search.strategies.rl.strategy import RLStrategy


class AMCTD3(AMCExploration, TD3):
    """TD3 with AMC's exploration and learning rates (:class:`~search.strategies.rl.common.AMCExploration`)."""


@register
class TD3Strategy(RLStrategy):
    """TD3 on the pruning environment, configured as AMC's DDPG is (noise, learning rates, networks)."""

    name = "td3"
    agent_class = AMCTD3

    @classmethod
    def build_agent(cls, env: Any, *, n_layers: int, warmup_episodes: int, seed: int, n_envs: int = 1) -> Any:
        noise = TruncatedNormalNoise(warmup_episodes=warmup_episodes, seed=seed)
        return cls.agent_class("MlpPolicy", env, learning_rate=ACTOR_LR,
                               action_noise=SharedNoise(noise, n_envs) if n_envs > 1 else noise,
                               policy_kwargs=dict(net_arch=dict(pi=list(NET_ARCH), qf=list(NET_ARCH))),
                               **off_policy_settings(n_layers=n_layers, warmup_episodes=warmup_episodes, seed=seed,
                                                     n_envs=n_envs))
