"""The loop every RL strategy shares: an SB3 agent on :class:`~envs.PruningEnv`, one evaluation per episode.

With a run folder the agent is checkpointed after every episode and a resumed search continues it
(:mod:`search.strategies.rl.checkpoint`). The algorithms (:mod:`.ddpg`, :mod:`.td3`, :mod:`.sac`) only say
which SB3 class to run and how to configure it.
"""

from __future__ import annotations

import logging
import os
from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from stable_baselines3.common.logger import Logger

from envs import PruningEnv
from search.history import SEARCH, Record
from search.problem import SearchProblem
from search.starts import own_records
from search.strategies.base import Strategy
from search.strategies.rl.checkpoint import (
    CheckpointCallback,
    CheckpointInfo,
    ResumePoint,
    check_compatible,
    load_checkpoint,
    read_info,
)
from search.strategies.rl.vec_env import BatchedVecEnv, PrefetchEvaluator, ReplayEvaluator, replayed_result
from amc.errors import ConfigError
from amc.seeding import seeded

if TYPE_CHECKING:
    from amc.context import Context
    from search.config import SearchConfig

log = logging.getLogger(__name__)
CHECKPOINT_INTERVAL = 2.0  # seconds at least between a run's agent checkpoints (search.strategies.rl.checkpoint)


class RLStrategy(Strategy):
    """Runs an SB3 agent on :class:`~envs.PruningEnv`; each episode is one evaluation.

    Args:
        warmup_episodes: Episodes of random actions before learning starts.
        min_keep, max_keep, reward: The environment's settings.
        n_envs: Parallel environments (their terminal policies are evaluated in one batch).
        checkpoint_dir: Where the agent is checkpointed after every episode (the run's ``agent/``); a
            run whose problem holds earlier records continues the agent found there. None: no checkpoints.
        checkpoint_interval: Seconds at least between two checkpoints after the first (0: every episode).
            Rows recorded after the last checkpoint are replayed on resume, so a longer interval loses nothing;
            it only bounds the cost of writing (20-50 ms a checkpoint on the digits cnn).
    """

    agent_class: ClassVar[type]  # the SB3 algorithm (what a checkpoint is loaded as)

    def __init__(self, *, warmup_episodes: int = 100, min_keep: float = 0.2, max_keep: float = 1.0,
                 reward: str = "acc", n_envs: int = 1, checkpoint_dir: str | os.PathLike | None = None,
                 checkpoint_interval: float = 0.0) -> None:
        self.checkpoint_interval = checkpoint_interval
        self.n_envs = n_envs
        self.warmup_episodes = warmup_episodes
        self.min_keep, self.max_keep, self.reward = min_keep, max_keep, reward
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.resumed: CheckpointInfo | None = None  # the checkpoint the last run() continued
        self.agent: Any = None

    @classmethod
    def from_config(cls, config: SearchConfig, *, out: Path, batch_size: int, ctx: Context) -> RLStrategy:
        return cls(warmup_episodes=config.warmup_episodes, min_keep=config.min_keep, max_keep=config.max_keep,
                   reward=config.reward, n_envs=batch_size, checkpoint_dir=out / "agent",
                   checkpoint_interval=CHECKPOINT_INTERVAL)

    @classmethod
    @abstractmethod
    def build_agent(cls, env: Any, *, n_layers: int, warmup_episodes: int, seed: int, n_envs: int = 1) -> Any:
        """A fresh SB3 agent of this algorithm on ``env``, configured as AMC
        (:func:`~search.strategies.rl.common.off_policy_settings`)."""

    def run(self, problem: SearchProblem, evaluations: int, *, seed: int) -> None:
        # SB3 seeds (and draws from) torch's, numpy's and Python's global generators: keep that to this run.
        with seeded(seed, host_generators=True):
            self._run(problem, evaluations, seed)

    def _run(self, problem: SearchProblem, evaluations: int, seed: int) -> None:
        def make_env(evaluator) -> PruningEnv:
            return PruningEnv(problem.graph, problem.cost_model, evaluator, budget=problem.budget,
                              min_keep=self.min_keep, max_keep=self.max_keep, reward=self.reward,
                              criterion=problem.criterion, granularity=problem.granularity,
                              projector=problem.projector if getattr(problem.projector, "exact", False) else None)

        # Steps per episode, at most: one per width decision, one more per removable block with --depth (a
        # dropped block's inner decisions take no step, so such episodes are shorter).
        n_layers = len(problem.graph) + len(problem.blocks)
        if problem.blocks and self.n_envs > 1:
            raise ConfigError(f"--strategy {self.name} with --depth runs one environment (its episodes end at "
                              f"different steps), got {self.n_envs} (one per worker); use --workers 1 or leave "
                              "out --depth")
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
            agent = self.build_agent(env, n_layers=n_layers, warmup_episodes=min(self.warmup_episodes, evaluations),
                                     seed=seed, n_envs=self.n_envs)
        else:
            agent = load_checkpoint(self.checkpoint_dir, self.agent_class, env)
            resumes = (*info.resumes, ResumePoint(info.evaluations, int(agent.num_timesteps), len(pending)))
            log.info("resuming the %s agent of %s after %d evaluations (%d steps, %d transitions); %d later "
                     "rows of history.csv are replayed, not evaluated again", self.name, self.checkpoint_dir,
                     info.evaluations, info.num_timesteps, info.transitions, len(pending))
        if info is None:
            demonstrations = [r for r in problem.records if r.origin != SEARCH]
            add_demonstrations(agent, make_env, demonstrations, n_envs=self.n_envs)
        self.agent = agent
        callback = None if self.checkpoint_dir is None else CheckpointCallback(
            self.checkpoint_dir, kind=self.name, n_layers=n_layers, resumes=resumes, interval=self.checkpoint_interval,
            evaluations=lambda: problem.count - len(evaluator.pending))
        # SB3's default logger makes an empty /tmp/SB3-<date> folder at every learn(), even with verbose=0.
        agent.set_logger(Logger(folder=None, output_formats=[]))
        if problem.blocks:  # episodes of varying length: stop after as many episodes as evaluations
            from stable_baselines3.common.callbacks import CallbackList, StopTrainingOnMaxEpisodes

            stop = StopTrainingOnMaxEpisodes(max_episodes=evaluations + len(pending))
            callback = CallbackList([stop] if callback is None else [stop, callback])
        agent.learn(total_timesteps=(evaluations + len(pending)) * n_layers, callback=callback,
                    reset_num_timesteps=info is None)

    def _checkpoint_to_resume(self, problem: SearchProblem, n_layers: int) -> CheckpointInfo | None:
        if self.checkpoint_dir is None or not own_records(problem):  # a fresh run overwrites any stale checkpoint
            return None
        info = read_info(self.checkpoint_dir)
        if info is None:
            log.warning("no agent checkpoint in %s (a run folder from before checkpoints): the %s search goes "
                        "on with a fresh agent", self.checkpoint_dir, self.name)
            return None
        check_compatible(info, self.checkpoint_dir, kind=self.name, n_envs=self.n_envs, n_layers=n_layers,
                         recorded=problem.count)
        return info


class _Known:
    """The evaluator of a demonstration episode: the recorded result of the policy it replays."""

    streams_results = False

    def __init__(self, record: Record) -> None:
        self.result = replayed_result(record)

    def evaluate(self, policy) -> Any:
        return self.result

    def evaluate_many(self, policies) -> list:
        return [self.result for _ in policies]


def add_demonstrations(agent: Any, make_env, records: list[Record], *, n_envs: int = 1) -> None:
    """Puts the episodes that produce ``records`` (the baselines and warm starts) into the agent's replay buffer,
    with their recorded rewards: the agent learns from them as from its own episodes, without evaluating them
    again. Each action is the one whose keep ratio is the record's (the environment's clipping keeps a
    feasible policy as it is); with N environments each demonstration fills all N slots of a step."""
    import numpy as np

    buffer = agent.replay_buffer
    for record in records:
        env = make_env(_Known(record))
        obs, _ = env.reset()
        for action in env.actions_for(record.keep):  # with --depth a block's step drops it or keeps it
            next_obs, reward, terminated, _, _ = env.step(action)
            buffer.add(np.repeat(obs[None], n_envs, 0), np.repeat(next_obs[None], n_envs, 0),
                       np.repeat(action[None], n_envs, 0), np.full(n_envs, reward, dtype=np.float32),
                       np.full(n_envs, terminated), [{} for _ in range(n_envs)])
            obs = next_obs
    if records:
        log.info("%d baseline and warm-start episodes added to the %s agent's replay buffer as demonstrations",
                 len(records), type(agent).__name__)
