"""RL strategies: AMC's DDPG, and TD3 and SAC, on stable-baselines3 (one thin module each).

- :mod:`.common`: what AMC adds to SB3 (episode reward buffer, truncated-normal noise, learning rates).
- :mod:`.strategy`: the loop they share (:class:`RLStrategy`: agent, checkpoints, resume).
- :mod:`.vec_env`: N environments evaluated in one batch; a resumed run's rows replayed.
- :mod:`.checkpoint`: the agent's checkpoints in the run's ``agent/`` folder.
"""

from __future__ import annotations

from typing import Any

from search.strategies.base import REGISTRY
from search.strategies.rl.common import (ACTOR_LR, CRITIC_LR, EpisodeRewardBuffer, SharedNoise,
                                         TruncatedNormalNoise)
from search.strategies.rl.ddpg import AMCDDPG, DDPGStrategy
from search.strategies.rl.sac import SACStrategy
from search.strategies.rl.strategy import CHECKPOINT_INTERVAL, RLStrategy
from search.strategies.rl.td3 import AMCTD3, TD3Strategy


def build_agent(kind: str, env: Any, *, n_layers: int, warmup_episodes: int, seed: int, n_envs: int = 1) -> Any:
    """The SB3 agent of the RL strategy ``kind`` (``ddpg``, ``td3`` or ``sac``) on ``env``, configured as AMC."""
    strategy = REGISTRY[kind]
    if not issubclass(strategy, RLStrategy):
        raise ValueError(f"{kind!r} is not an RL strategy; use one of ddpg, td3, sac")
    return strategy.build_agent(env, n_layers=n_layers, warmup_episodes=warmup_episodes, seed=seed, n_envs=n_envs)


__all__ = ["ACTOR_LR", "AMCDDPG", "AMCTD3", "CHECKPOINT_INTERVAL", "CRITIC_LR", "DDPGStrategy", "EpisodeRewardBuffer",
           "RLStrategy", "SACStrategy", "SharedNoise", "TD3Strategy", "TruncatedNormalNoise", "build_agent"]
