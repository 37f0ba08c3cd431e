"""``sac``: SB3's SAC (Haarnoja et al., 2018) on the pruning environment, with AMC's episode reward.

SAC explores through its own entropy bonus: no action noise, one learning rate (the critic's, 1e-3).
"""

from __future__ import annotations

from typing import Any

from stable_baselines3 import SAC

from search.strategies.base import register
from search.strategies.rl.common import CRITIC_LR, NET_ARCH, off_policy_settings
from search.strategies.rl.strategy import RLStrategy


@register
class SACStrategy(RLStrategy):
    """SAC search (``--strategy sac``)."""

    name = "sac"
    agent_class = SAC

    @classmethod
    def build_agent(cls, env: Any, *, n_layers: int, warmup_episodes: int, seed: int, n_envs: int = 1) -> Any:
        return SAC("MlpPolicy", env, learning_rate=CRITIC_LR, policy_kwargs=dict(net_arch=list(NET_ARCH)),
                   **off_policy_settings(n_layers=n_layers, warmup_episodes=warmup_episodes, seed=seed,
                                         n_envs=n_envs))
