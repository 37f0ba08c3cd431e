"""Checkpoints of an RL search's agent, so that ``--resume`` continues the agent instead of a fresh one.

``runs/<name>/agent/checkpoint.zip`` holds, at an episode boundary (after the episode's transitions are
stored and the networks trained on them):

- ``model.zip``: the SB3 ``save()`` of the agent: networks, optimizer states, ``num_timesteps``, the
  episode count and the exploration noise;
- ``replay_buffer.pkl``: SB3's ``save_replay_buffer()`` (with the reward baseline of
  :class:`~search.strategies.rl.common.EpisodeRewardBuffer`);
- ``rng.pkl``: the states of the generators the agent draws from (torch, numpy, Python, the action
  space's, the noise's), because SB3's ``load()`` re-seeds them all;
- ``state.json``: what is readable without SB3: counters, the noise's sigma and the resume history.

It is rewritten after the first finished episode, then at an episode boundary at least every
``interval`` seconds (:data:`~search.strategies.rl.strategy.CHECKPOINT_INTERVAL`; 0: every episode), and
at the end (a temporary file, fsync, ``os.replace``): one file, so the four parts always belong together. A
write takes 20-50 ms whatever the model (3 MB: the 300x300 networks, their targets and Adam states;
about half of it SB3's compression, half the fsync); on the digits cnn an evaluation takes about 100 ms,
so writing every episode would add 20-35% there. Rows after the checkpoint are replayed (below), so the
interval costs nothing but replay time.

Consistency with ``history.csv``: a row is written (and fsynced) inside the episode's last step, the
checkpoint after the training that follows, so a kill between the two leaves rows the checkpoint has
not seen (``state.json``'s ``evaluations`` counts the rows it has). Those rows are neither dropped nor
evaluated again. The resumed agent starts from the checkpoint with every generator restored, so it
proposes the same policies as before the kill; an episode that history already holds is answered from
its row (:class:`~search.strategies.rl.vec_env.ReplayEvaluator`, or
:class:`~search.strategies.rl.vec_env.PrefetchEvaluator` with N environments) and is not recorded twice. Should the agent propose another policy (a different torch build, say),
its episode is evaluated for the agent but not recorded, so ``history.csv`` still gets exactly one row
per evaluation of the run's budget.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import pickle
import random
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from amc.errors import ConfigError

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.zip"
FORMAT = 1
# The agent's noise and replay buffer are pickled by module path: checkpoints written before the RL code moved
# into search.strategies.rl name the module they were defined in then.
FORMER_MODULES = {"search.ddpg": "search.strategies.rl.common"}


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed agent took up its run: rows its checkpoint had, its steps, rows it replayed."""

    evaluations: int
    num_timesteps: int
    replayed: int


@dataclass(frozen=True)
class CheckpointInfo:
    """``state.json`` of a checkpoint.

    Attributes:
        kind: ``ddpg``, ``td3`` or ``sac``.
        n_envs, n_layers: Environments the agent ran and steps per episode.
        evaluations: Rows of ``history.csv`` the agent has learnt from.
        episodes, num_timesteps, transitions: The agent's episode count, step count and replay-buffer size.
        sigma: Exploration noise's current sigma (None for SAC).
        resumes: Every resume of this agent so far.
    """

    kind: str
    n_envs: int
    n_layers: int
    evaluations: int
    episodes: int
    num_timesteps: int
    transitions: int
    sigma: float | None
    resumes: tuple[ResumePoint, ...] = ()


def base_noise(agent: Any) -> Any:
    """The agent's :class:`~search.strategies.rl.common.TruncatedNormalNoise` (also inside a ``SharedNoise``), or None."""
    noise = getattr(agent, "action_noise", None)
    noise = getattr(noise, "base_noise", noise)
    return noise if hasattr(noise, "get_state") else None


def episodes(agent: Any, n_layers: int) -> int:
    """Episodes the agent has finished, in all its environments: every episode is ``n_layers`` steps, and
    SB3's ``num_timesteps`` counts each environment's steps (exact at the episode boundaries checkpoints
    are written at)."""
    return int(agent.num_timesteps) // n_layers


def save_checkpoint(agent: Any, folder: str | os.PathLike, *, kind: str, n_layers: int, evaluations: int,
                    resumes: Sequence[ResumePoint] = ()) -> CheckpointInfo:
    """Writes ``folder/checkpoint.zip`` for ``agent`` at an episode boundary, atomically.

    Args:
        agent: The SB3 agent, between two rollouts.
        folder: The run's ``agent/`` folder.
        kind, n_layers: Recorded so that a resume can refuse another strategy or model.
        evaluations: Rows of ``history.csv`` the agent has learnt from.
        resumes: The agent's earlier resumes.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    noise = base_noise(agent)
    info = CheckpointInfo(kind=kind, n_envs=agent.n_envs, n_layers=n_layers, evaluations=evaluations,
                          episodes=episodes(agent, n_layers), num_timesteps=int(agent.num_timesteps),
                          transitions=int(agent.replay_buffer.size()) * agent.n_envs,
                          sigma=None if noise is None else float(noise.sigma), resumes=tuple(resumes))
    model, buffer = io.BytesIO(), io.BytesIO()
    agent.save(model)
    agent.save_replay_buffer(buffer)
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
           "action_space": agent.action_space.np_random.bit_generator.state,
           "noise": None if noise is None else noise.get_state()}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".checkpoint-", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # as readable as the run's other files (mkstemp makes it private)
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
                archive.writestr("model.zip", model.getvalue())
                archive.writestr("replay_buffer.pkl", buffer.getvalue())
                archive.writestr("rng.pkl", pickle.dumps(rng))
                archive.writestr("state.json", json.dumps({"format": FORMAT, **asdict(info)}, indent=2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / CHECKPOINT)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
    return info


def read_info(folder: str | os.PathLike) -> CheckpointInfo | None:
    """The ``state.json`` of ``folder/checkpoint.zip``; None when there is no checkpoint.

    Raises:
        ConfigError: The file is not a checkpoint of this tool.
    """
    path = Path(folder) / CHECKPOINT
    if not path.exists():
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            state = json.loads(archive.read("state.json"))
        if (version := state.pop("format", None)) != FORMAT:
            raise ValueError(f"format {version!r}, expected {FORMAT}")
        state["resumes"] = tuple(ResumePoint(**r) for r in state["resumes"])
        return CheckpointInfo(**state)
    except (zipfile.BadZipFile, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{str(path)!r} is not an agent checkpoint of this tool ({exc}); delete it to "
                          "resume the run with a fresh agent") from None


def load_checkpoint(folder: str | os.PathLike, agent_class: type, env: Any) -> Any:
    """The agent saved in ``folder/checkpoint.zip``, on ``env``, with its replay buffer and generators.

    Call it right before ``learn(..., reset_num_timesteps=False)``: it leaves the global torch, numpy
    and Python generators where the saved run had them.
    """
    with zipfile.ZipFile(Path(folder) / CHECKPOINT) as archive, _former_module_paths():
        agent = agent_class.load(io.BytesIO(archive.read("model.zip")), env=env, device="cpu")
        agent.load_replay_buffer(io.BytesIO(archive.read("replay_buffer.pkl")))
        rng = pickle.loads(archive.read("rng.pkl"))
    # load() re-seeded every generator with the run's seed: put each back where the saved run left it.
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    agent.action_space.np_random.bit_generator.state = rng["action_space"]
    noise = base_noise(agent)
    if noise is not None:
        noise.set_state(rng["noise"])
    return agent


@contextmanager
def _former_module_paths() -> Iterator[None]:
    """The modules of :data:`FORMER_MODULES` importable under their former paths while a checkpoint loads."""
    added = [former for former in FORMER_MODULES if former not in sys.modules]
    for former in added:
        sys.modules[former] = importlib.import_module(FORMER_MODULES[former])
    try:
        yield
    finally:
        for former in added:
            sys.modules.pop(former, None)


def check_compatible(info: CheckpointInfo, folder: Path, *, kind: str, n_envs: int, n_layers: int,
                     recorded: int) -> None:
    """Refuses a checkpoint the resumed search cannot continue, naming the fix.

    Raises:
        ConfigError: Another strategy, environment count or model, or more rows than ``history.csv`` has.
    """
    fix = f"delete {str(folder)!r} to resume with a fresh agent"
    if info.kind != kind or info.n_layers != n_layers:
        raise ConfigError(f"the agent checkpoint in {str(folder)!r} is a {info.kind} agent for {info.n_layers} "
                          f"layers, not {kind} for {n_layers}; {fix}")
    if info.n_envs != n_envs:
        raise ConfigError(f"the {kind} agent in {str(folder)!r} ran {info.n_envs} environments (parallel "
                          f"workers) but this resume runs {n_envs}; resume with --workers {info.n_envs}, or {fix}")
    if info.evaluations > recorded:
        raise ConfigError(f"the agent checkpoint in {str(folder)!r} has learnt from {info.evaluations} "
                          f"evaluations but history.csv holds {recorded}; {fix}")


class CheckpointCallback(BaseCallback):
    """Saves the agent after each finished episode (when the next rollout starts, after training) and at the end.

    Args:
        folder: The run's ``agent/`` folder.
        kind, n_layers: See :func:`save_checkpoint`.
        evaluations: Returns the rows of ``history.csv`` the agent has learnt from so far.
        resumes: The agent's resumes, this one included.
        interval: Seconds at least between two saves after the first one of this run (the save at the end
            of training always happens).
    """

    def __init__(self, folder: str | os.PathLike, *, kind: str, n_layers: int, evaluations: Callable[[], int],
                 resumes: Sequence[ResumePoint] = (), interval: float = 0.0) -> None:
        super().__init__()
        self.interval = interval
        self._last_save: float | None = None  # perf_counter of this run's last save
        self.folder = Path(folder)
        self.kind, self.n_layers = kind, n_layers
        self.evaluations = evaluations
        self.resumes = tuple(resumes)
        self._saved_at: int | None = None  # the agent's episode count at the last save

    def _on_training_start(self) -> None:
        self._saved_at = episodes(self.model, self.n_layers)  # a resumed agent starts as its checkpoint has it
        for stale in self.folder.glob(".checkpoint-*.tmp"):  # a write that a kill cut short
            stale.unlink(missing_ok=True)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if self._last_save is None or time.perf_counter() - self._last_save >= self.interval:
            self._save()

    def _on_training_end(self) -> None:
        self._save()

    def _save(self) -> None:
        if episodes(self.model, self.n_layers) == self._saved_at:
            return
        self._last_save = time.perf_counter()
        save_checkpoint(self.model, self.folder, kind=self.kind, n_layers=self.n_layers,
                        evaluations=self.evaluations(), resumes=self.resumes)
        self._saved_at = episodes(self.model, self.n_layers)
