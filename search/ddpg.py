"""AMC-style DDPG (He et al., 2018) on stable-baselines3, plus TD3 and SAC on the same environment.

What AMC does that SB3's DDPG does not is added through SB3's own extension points:

- :class:`EpisodeRewardBuffer` (a ``ReplayBuffer`` subclass): every transition of an episode gets the
  episode's final reward; sampled rewards have a moving-average baseline subtracted (AMC's
  ``moving_average`` with alpha 0.5).
- :class:`TruncatedNormalNoise` (an ``ActionNoise``): truncated-normal exploration around the actor's
  action, sigma 0.5 of the keep range, multiplied by 0.95 per episode after the warm-up.
- :class:`AMCDDPG` (a ``DDPG`` subclass): separate actor/critic learning rates (1e-4 / 1e-3) and
  the truncated sampling of the noise around the action.

Actor and critic: 300x300; tau 0.01; gamma 1.0; batch 64; replay buffer 100 x layers transitions;
warm-up episodes of uniform random actions; networks updated once per transition at each episode end.

With a run folder, :class:`RLStrategy` checkpoints the agent after every episode and a resumed search
continues it (:mod:`search.rl_checkpoint`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import truncnorm
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.noise import ActionNoise, VectorizedActionNoise
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from envs import PruningEnv
from search.problem import SearchProblem
from search.rl_checkpoint import (
    CheckpointCallback,
    CheckpointInfo,
    ResumePoint,
    check_compatible,
    load_checkpoint,
    read_info,
)
from search.rl_envs import BatchedVecEnv, PrefetchEvaluator, ReplayEvaluator

log = logging.getLogger(__name__)

ACTOR_LR = 1e-4
CRITIC_LR = 1e-3


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

    def __call__(self) -> np.ndarray:  # ActionNoise API: plain zero-mean noise (unused by AMCDDPG)
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


class _AMCMixin:
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


class AMCDDPG(_AMCMixin, DDPG):
    """DDPG as AMC configures it (see the module docstring)."""


class AMCTD3(_AMCMixin, TD3):
    """TD3 with AMC's episode reward, exploration and learning rates."""


AGENTS = {"ddpg": AMCDDPG, "td3": AMCTD3, "sac": SAC}


def build_agent(kind: str, env, *, n_layers: int, warmup_episodes: int, seed: int, n_envs: int = 1) -> Any:
    """The SB3 agent for ``kind`` in ("ddpg", "td3", "sac") on ``env``, configured as AMC.

    With several environments (which all finish their episodes together, after ``n_layers`` steps) SB3
    refuses episodic ``train_freq``; ``n_layers`` steps is the same schedule.
    """
    common = dict(
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
    if kind == "sac":
        return SAC("MlpPolicy", env, learning_rate=CRITIC_LR, policy_kwargs=dict(net_arch=[300, 300]), **common)
    noise = TruncatedNormalNoise(warmup_episodes=warmup_episodes, seed=seed)
    if n_envs > 1:
        noise = SharedNoise(noise, n_envs)
    cls = AMCDDPG if kind == "ddpg" else AMCTD3
    return cls("MlpPolicy", env, learning_rate=ACTOR_LR, action_noise=noise,
               policy_kwargs=dict(net_arch=dict(pi=[300, 300], qf=[300, 300])), **common)


class RLStrategy:
    """Runs an SB3 agent on :class:`~envs.PruningEnv`; each episode is one evaluation.

    Args:
        kind: ``ddpg``, ``td3`` or ``sac``.
        warmup_episodes: Episodes of random actions before learning starts.
        min_keep, max_keep, reward: The environment's settings.
        n_envs: Parallel environments (their terminal policies are evaluated in one batch).
        checkpoint_dir: Where the agent is checkpointed after every episode (the run's ``agent/``); a
            run whose problem holds earlier records continues the agent found there. None: no checkpoints.
        checkpoint_interval: Seconds at least between two checkpoints after the first (0: every episode).
            Rows recorded after the last checkpoint are replayed on resume, so a longer interval loses nothing;
            it only bounds the cost of writing (20-50 ms a checkpoint on the digits cnn).
    """

    def __init__(self, kind: str = "ddpg", *, warmup_episodes: int = 100, min_keep: float = 0.2,
                 max_keep: float = 1.0, reward: str = "acc", n_envs: int = 1,
                 checkpoint_dir: str | os.PathLike | None = None, checkpoint_interval: float = 0.0) -> None:
        self.name = kind
        self.checkpoint_interval = checkpoint_interval
        self.n_envs = n_envs
        self.kind = kind
        self.warmup_episodes = warmup_episodes
        self.min_keep, self.max_keep, self.reward = min_keep, max_keep, reward
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.resumed: CheckpointInfo | None = None  # the checkpoint the last run() continued

    def run(self, problem: SearchProblem, evaluations: int, *, seed: int) -> None:
        torch.manual_seed(seed)

        def make_env(evaluator) -> PruningEnv:
            return PruningEnv(problem.graph, problem.cost_model, evaluator, budget=problem.budget,
                              min_keep=self.min_keep, max_keep=self.max_keep, reward=self.reward,
                              criterion=problem.criterion, granularity=problem.granularity)

        n_layers = len(problem.graph)
        self.resumed = info = self._checkpoint_to_resume(problem, n_layers)
        pending = list(problem.records[info.evaluations:]) if info else []  # rows the checkpoint has not seen
        if self.n_envs == 1:
            evaluator = ReplayEvaluator(problem, pending)
            env = make_env(evaluator)
        else:
            evaluator = PrefetchEvaluator(problem, evaluations, pending=pending)
            env = BatchedVecEnv([lambda: make_env(evaluator)] * self.n_envs, evaluator)
        resumes: tuple[ResumePoint, ...] = ()
        if info is None:
            agent = build_agent(self.kind, env, n_layers=n_layers, warmup_episodes=min(self.warmup_episodes,
                                evaluations), seed=seed, n_envs=self.n_envs)
        else:
            agent = load_checkpoint(self.checkpoint_dir, AGENTS[self.kind], env)
            resumes = (*info.resumes, ResumePoint(info.evaluations, int(agent.num_timesteps), len(pending)))
            log.info("resuming the %s agent of %s after %d evaluations (%d steps, %d transitions); %d later "
                     "rows of history.csv are replayed, not evaluated again", self.kind, self.checkpoint_dir,
                     info.evaluations, info.num_timesteps, info.transitions, len(pending))
        self.agent = agent
        callback = None if self.checkpoint_dir is None else CheckpointCallback(
            self.checkpoint_dir, kind=self.kind, n_layers=n_layers, resumes=resumes, interval=self.checkpoint_interval,
            evaluations=lambda: problem.count - len(evaluator.pending))
        # SB3's default logger makes an empty /tmp/SB3-<date> folder at every learn(), even with verbose=0.
        agent.set_logger(Logger(folder=None, output_formats=[]))
        agent.learn(total_timesteps=(evaluations + len(pending)) * n_layers, callback=callback,
                    reset_num_timesteps=info is None)

    def _checkpoint_to_resume(self, problem: SearchProblem, n_layers: int) -> CheckpointInfo | None:
        if self.checkpoint_dir is None or problem.count == 0:  # a fresh run overwrites any stale checkpoint
            return None
        info = read_info(self.checkpoint_dir)
        if info is None:
            log.warning("no agent checkpoint in %s (a run folder from before checkpoints): the %s search goes "
                        "on with a fresh agent", self.checkpoint_dir, self.kind)
            return None
        check_compatible(info, self.checkpoint_dir, kind=self.kind, n_envs=self.n_envs, n_layers=n_layers,
                         recorded=problem.count)
        return info
