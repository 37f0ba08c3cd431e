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
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from scipy.stats import truncnorm
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise, VectorizedActionNoise
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import DummyVecEnv

from amc.evaluate import EvalResult
from envs import PruningEnv
from search.problem import SearchProblem

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


class PrefetchEvaluator:
    """The evaluator of N parallel environments: their terminal policies are evaluated in one batch.

    :class:`BatchedVecEnv` hands over the policies the current actions will finish; they are evaluated
    together (e.g. on a Ray pool) before the environments step, and each environment then picks up its
    own result. Policies beyond the evaluation budget (the last round of a run whose count is not a
    multiple of N) are not evaluated or recorded; their episodes get the batch's mean accuracy.
    """

    def __init__(self, problem: SearchProblem, limit: int) -> None:
        self.problem = problem
        self.limit = limit  # evaluations this strategy may still record
        self._ready: dict[tuple[float, ...], list[EvalResult]] = {}

    def prefetch(self, policies: list) -> None:
        evaluated = policies[: self.limit]
        results = self.problem.evaluate_many(evaluated) if evaluated else []
        self.limit -= len(evaluated)
        if len(policies) > len(evaluated):
            mean = float(np.mean([r.accuracy for r in results])) if results else 0.0
            results = results + [EvalResult(mean, float("nan"), (), 0.0, 0.0, cached=True)] * (
                len(policies) - len(evaluated))
        for policy, result in zip(policies, results):
            self._ready.setdefault(tuple(policy.keep.values()), []).append(result)

    def evaluate(self, policy) -> EvalResult:
        waiting = self._ready.get(tuple(policy.keep.values()))
        if waiting:
            return waiting.pop(0)
        self.limit -= 1
        return self.problem.evaluate(policy)

    def evaluate_many(self, policies) -> list[EvalResult]:
        return [self.evaluate(p) for p in policies]


class BatchedVecEnv(DummyVecEnv):
    """``DummyVecEnv`` that evaluates all environments' finished policies in one batch per step."""

    def __init__(self, env_fns, prefetch: PrefetchEvaluator) -> None:
        super().__init__(env_fns)
        self.prefetch = prefetch

    def step_wait(self):
        previews = [env.unwrapped.preview(action) for env, action in zip(self.envs, self.actions)]
        finished = [p for p in previews if p is not None]
        if finished:
            self.prefetch.prefetch(finished)
        return super().step_wait()


class RLStrategy:
    """Runs an SB3 agent on :class:`~envs.PruningEnv`; each episode is one evaluation."""

    def __init__(self, kind: str = "ddpg", *, warmup_episodes: int = 100, min_keep: float = 0.2,
                 max_keep: float = 1.0, reward: str = "acc", n_envs: int = 1) -> None:
        self.name = kind
        self.n_envs = n_envs
        self.kind = kind
        self.warmup_episodes = warmup_episodes
        self.min_keep, self.max_keep, self.reward = min_keep, max_keep, reward

    def run(self, problem: SearchProblem, evaluations: int, *, seed: int) -> None:
        torch.manual_seed(seed)

        def make_env(evaluator) -> PruningEnv:
            return PruningEnv(problem.graph, problem.cost_model, evaluator, budget=problem.budget,
                              min_keep=self.min_keep, max_keep=self.max_keep, reward=self.reward,
                              criterion=problem.criterion, granularity=problem.granularity)

        n_layers = len(problem.graph)
        warmup = min(self.warmup_episodes, evaluations)
        if self.n_envs == 1:
            env = make_env(problem)
        else:
            prefetch = PrefetchEvaluator(problem, evaluations)
            env = BatchedVecEnv([lambda: make_env(prefetch)] * self.n_envs, prefetch)
        agent = build_agent(self.kind, env, n_layers=n_layers, warmup_episodes=warmup, seed=seed,
                            n_envs=self.n_envs)
        agent.learn(total_timesteps=evaluations * n_layers)
        self.agent = agent
