"""What AMC (He et al., 2018) adds to stable-baselines3's off-policy agents, through SB3's extension points.

- :class:`EpisodeRewardBuffer` (a ``ReplayBuffer`` subclass): every transition of an episode gets the
  episode's final reward; sampled rewards have a moving-average baseline subtracted (AMC's
  ``moving_average`` with alpha 0.5).
- :class:`TruncatedNormalNoise` (an ``ActionNoise``): truncated-normal exploration around the actor's
  action, sigma 0.5 of the keep range, multiplied by 0.95 per episode after the warm-up;
  :class:`SharedNoise` gives N environments one stream of it.
- :class:`AMCExploration` (a mixin for SB3's TD3 family): separate actor/critic learning rates
  (1e-4 / 1e-3) and the truncated sampling of the noise around the action. It overrides SB3's
  ``_update_learning_rate`` and ``_sample_action``, the hooks its algorithms are customised through:
  ``ActionNoise`` only adds zero-mean noise, and one ``learning_rate`` schedule drives every optimizer.
- :func:`off_policy_settings`: the settings every agent shares: 300x300 networks, tau 0.01, gamma 1.0,
  batch 64, replay buffer 100 x layers transitions, warm-up episodes of uniform random actions, networks
  updated once per transition at each episode end.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import truncnorm
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise, VectorizedActionNoise
from stable_baselines3.common.type_aliases import ReplayBufferSamples

ACTOR_LR = 1e-4
CRITIC_LR = 1e-3
NET_ARCH = (300, 300)  # hidden layers of the actor and critic


class EpisodeRewardBuffer(ReplayBuffer):
    """Gives each transition its episode's final reward; subtracts a moving-average baseline on sampling."""

    def __init__(self, *args: Any, baseline_alpha: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.baseline_alpha = baseline_alpha
        self.baseline: float | None = None
        self._episode_pos: list[list[int]] = [[] for _ in range(self.n_envs)]

    def add(self, obs, next_obs, action, reward, done, infos) -> None:
        pos = self.pos
        super().add(obs, next_obs, action, reward, done, infos)
        for env in range(self.n_envs):
            self._episode_pos[env].append(pos)
            if done[env]:
                # The last step's reward is the episode's reward: spread it over the whole episode.
                self.rewards[self._episode_pos[env], env] = reward[env]
                self._episode_pos[env] = []

    def sample(self, batch_size: int, env=None) -> ReplayBufferSamples:
        samples = super().sample(batch_size, env)
        mean = float(samples.rewards.mean())
        if self.baseline is None:
            self.baseline = mean
        else:
            self.baseline += self.baseline_alpha * (mean - self.baseline)
        return samples._replace(rewards=samples.rewards - self.baseline)


class TruncatedNormalNoise(ActionNoise):
    """AMC's exploration: ``a ~ TruncNormal(mu=actor(s), sigma)`` within [-1, 1], sigma decaying per episode.

    Args:
        sigma: Initial standard deviation, in units of the action range [-1, 1] (AMC: 0.5 of [0, 1],
            i.e. 1.0 here).
        decay: Factor applied to sigma at every episode end after ``warmup_episodes``.
        warmup_episodes: Episodes of uniform random actions (no decay during them).
        seed: Seeds the sampling.
    """

    def __init__(self, *, sigma: float = 1.0, decay: float = 0.95, warmup_episodes: int = 0, seed: int | None = None) -> None:
        super().__init__()
        self.initial_sigma = sigma
        self.sigma = sigma
        self.decay = decay
        self.warmup_episodes = warmup_episodes
        self.episodes = 0
        self._learning = False
        self._rng = np.random.default_rng(seed)

    def sample_around(self, mean: np.ndarray) -> np.ndarray:
        a, b = (-1.0 - mean) / self.sigma, (1.0 - mean) / self.sigma
        return truncnorm.rvs(a, b, loc=mean, scale=self.sigma, random_state=self._rng).astype(np.float32)

    def __call__(self) -> np.ndarray:  # ActionNoise API: plain zero-mean noise (unused by AMCExploration)
        return self._rng.normal(0.0, self.sigma, size=1).astype(np.float32)

    def get_state(self) -> dict[str, Any]:
        """What a checkpoint keeps: sigma, the episodes counted and the generator's position."""
        return {"sigma": self.sigma, "episodes": self.episodes, "rng": self._rng.bit_generator.state}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores :meth:`get_state`; the next ``reset()`` is again ``learn()``'s start, not an episode end."""
        self.sigma, self.episodes = float(state["sigma"]), int(state["episodes"])
        self._rng.bit_generator.state = state["rng"]
        self._learning = False

    def reset(self, indices=None) -> None:  # SB3 passes indices=[i] per finished env with several envs
        if not self._learning:
            # SB3's learn() calls reset() once before the first step: that is no episode end.
            self._learning = True
            return
        self.episodes += 1
        if self.episodes > self.warmup_episodes:
            self.sigma *= self.decay


class SharedNoise(VectorizedActionNoise):
    """One :class:`TruncatedNormalNoise` stream for N environments.

    SB3 would wrap the noise in a ``VectorizedActionNoise`` of N deep copies: identical random streams
    (every environment exploring the same way) and a decay counted per copy. Here all environments draw
    from one generator and every finished episode, in any environment, counts once, as in AMC.
    """

    def __init__(self, noise: TruncatedNormalNoise, n_envs: int) -> None:  # no deep copies: see above
        self.n_envs = n_envs
        self.base_noise = noise
        self._noises = [noise] * n_envs  # not through SB3's setter, which resets each noise it is given

    def reset(self, indices=None) -> None:
        for _ in range(1 if indices is None else len(indices)):
            self.base_noise.reset()

    def __call__(self) -> np.ndarray:
        return np.stack([self.base_noise() for _ in range(self.n_envs)])


class AMCExploration:
    """Separate actor/critic learning rates and truncated-normal exploration for SB3's TD3 family."""

    def _update_learning_rate(self, optimizers) -> None:
        self.logger.record("train/learning_rate", ACTOR_LR)
        for group in self.actor.optimizer.param_groups:
            group["lr"] = ACTOR_LR
        for group in self.critic.optimizer.param_groups:
            group["lr"] = CRITIC_LR

    def _sample_action(self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1):
        noise = action_noise.base_noise if isinstance(action_noise, SharedNoise) else action_noise
        if not isinstance(noise, TruncatedNormalNoise):
            return super()._sample_action(learning_starts, action_noise, n_envs)
        action, buffer_action = super()._sample_action(learning_starts, None, n_envs)
        if self.num_timesteps >= learning_starts:
            buffer_action = noise.sample_around(buffer_action)  # (n_envs, 1): one draw per environment
            action = self.policy.unscale_action(buffer_action)
        return action, buffer_action


def off_policy_settings(*, n_layers: int, warmup_episodes: int, seed: int, n_envs: int = 1) -> dict[str, Any]:
    """The keyword arguments every AMC agent gives its SB3 class (see the module docstring).

    With several environments (which all finish their episodes together, after ``n_layers`` steps) SB3
    refuses episodic ``train_freq``; ``n_layers`` steps is the same schedule.
    """
    return dict(
        buffer_size=100 * n_layers,
        learning_starts=warmup_episodes * n_layers,
        batch_size=64,
        tau=0.01,
        gamma=1.0,
        train_freq=(1, "episode") if n_envs == 1 else (n_layers, "step"),
        gradient_steps=-1,  # one update per transition collected, at each episode end
        replay_buffer_class=EpisodeRewardBuffer,
        seed=seed,
        device="cpu",
        verbose=0,
    )
