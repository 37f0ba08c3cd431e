"""``ddpg``: AMC's agent (He et al., 2018): DDPG on stable-baselines3 with AMC's additions.

As in SB3, where ``DDPG`` is ``TD3`` with its tricks switched off, :class:`DDPGStrategy` is
:class:`~search.strategies.rl.td3.TD3Strategy` with SB3's ``DDPG``: one critic, no target smoothing,
no delayed actor updates. AMC's parts (:mod:`search.strategies.rl.common`): the episode's reward for
every transition with a moving-average baseline, truncated-normal exploration decaying by 0.95 per
episode after the warm-up, actor/critic learning rates 1e-4 / 1e-3, 300x300 networks.
"""

from __future__ import annotations

from stable_baselines3 import DDPG

from search.strategies.base import register
from search.strategies.rl.common import AMCExploration
from search.strategies.rl.td3 import TD3Strategy


class AMCDDPG(AMCExploration, DDPG):
    """DDPG as AMC configures it (see the module docstring)."""


@register
class DDPGStrategy(TD3Strategy):
    """AMC's DDPG search (``--strategy ddpg``)."""

    name = "ddpg"
    agent_class = AMCDDPG
