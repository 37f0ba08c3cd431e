"""RL resume: a DDPG/TD3/SAC search stopped at any point continues its agent, losing and repeating nothing.

Every resumed run here is compared with the same search run without a stop: the agent restored from
its checkpoint (networks, optimizers, replay buffer, noise, generators) proposes exactly what the
uninterrupted agent proposed, so the two ``history.csv`` files hold the same policies and accuracies.
"""

from __future__ import annotations

import csv
import json
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from amc.context import ContextConfig, build_context
from amc.errors import ConfigError
from amc.evaluation.evaluator import EvalResult
from amc.pruning.policy import Policy
from envs import BudgetProjector
from search.history import COLUMNS, HistoryWriter, read_history
from search.problem import SearchProblem
from search.strategies import get as strategy_class
from search.strategies.rl import RLStrategy
from search.strategies.rl import checkpoint as rl_checkpoint
from search.strategies.rl.checkpoint import CHECKPOINT, read_info
from tests.search.helpers import SEARCH_SCRIPT, kill_search_when, run_script

torch.set_num_threads(1)
pytestmark = pytest.mark.xdist_group("rl_resume")

BUDGET = 0.3
N = 8  # evaluations of every search here
WARMUP = 2  # random episodes: the agent learns from episode 3 on, before and after each stop


@pytest.fixture(scope="module")
def ctx(amc_cache: Path):
    return build_context(ContextConfig(cache_dir=str(amc_cache)), progress=False)


class Evaluator:
    """The context's evaluator, counting the policies it evaluates; the ``interrupt_at``-th raises Ctrl-C.

    ``steps`` holds the agent's step count at each evaluation (SB3 counts a step after it returns).
    """

    def __init__(self, inner, *, interrupt_at: int | None = None) -> None:
        self.inner = inner
        self.interrupt_at = interrupt_at
        self.calls = 0
        self.strategy: RLStrategy | None = None
        self.steps: list[int] = []

    def evaluate(self, policy: Policy) -> EvalResult:
        return self.evaluate_many([policy])[0]

    def evaluate_many(self, policies: Sequence[Policy]) -> list[EvalResult]:
        for _ in policies:
            self.calls += 1
            if self.calls == self.interrupt_at:
                raise KeyboardInterrupt
        self.steps.append(self.strategy.agent.num_timesteps)
        return self.inner.evaluate_many(policies)


def search(ctx, out: Path, *, kind: str = "ddpg", n_envs: int = 1, interrupt_at: int | None = None
           ) -> tuple[RLStrategy, Evaluator, bool]:
    """One (possibly resumed) search of ``N`` evaluations into ``out``, as the runner wires it."""
    out.mkdir(parents=True, exist_ok=True)
    previous = read_history(out / "history.csv")
    cost = ctx.cost_model()
    evaluator = Evaluator(ctx.evaluator, interrupt_at=interrupt_at)
    history = HistoryWriter(out / "history.csv")
    problem = SearchProblem(graph=ctx.graph, cost_model=cost, projector=BudgetProjector(cost, BUDGET),
                            evaluator=evaluator, history=history, strategy=kind, previous=previous)
    strategy = evaluator.strategy = strategy_class(kind)(warmup_episodes=WARMUP, n_envs=n_envs,
                                                         checkpoint_dir=out / "agent")
    interrupted = False
    try:
        strategy.run(problem, N - len(previous), seed=0)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        history.close()
    return strategy, evaluator, interrupted


def outcomes(out: Path) -> list[tuple[tuple[float, ...], float]]:
    """(keep, accuracy) of each row: what the search decided and measured, without timings."""
    return [(r.keep, r.accuracy) for r in read_history(out / "history.csv")]


_REFERENCES: dict[tuple[str, int], list] = {}


def reference(ctx, tmp_path_factory: pytest.TempPathFactory, kind: str, n_envs: int = 1) -> list:
    """Outcomes of the uninterrupted search (run once per kind and environment count)."""
    if (kind, n_envs) not in _REFERENCES:
        out = tmp_path_factory.mktemp(f"reference-{kind}-{n_envs}")
        search(ctx, out, kind=kind, n_envs=n_envs)
        _REFERENCES[kind, n_envs] = outcomes(out)
        assert len(_REFERENCES[kind, n_envs]) == N
    return _REFERENCES[kind, n_envs]


# --- stopped between two episodes: the checkpoint has every row ------------------------------------

@pytest.mark.parametrize("kind", ["ddpg", "td3", "sac"])
def test_resumed_agent_continues_from_its_checkpoint(ctx, tmp_path: Path, tmp_path_factory, kind: str) -> None:
    k = 3
    layers = len(ctx.graph)
    _, _, interrupted = search(ctx, tmp_path, kind=kind, interrupt_at=k + 1)
    assert interrupted and len(read_history(tmp_path / "history.csv")) == k
    saved = read_info(tmp_path / "agent")
    assert (saved.kind, saved.evaluations, saved.episodes) == (kind, k, k)
    assert saved.num_timesteps == saved.transitions == k * layers

    strategy, evaluator, interrupted = search(ctx, tmp_path, kind=kind)
    assert not interrupted
    assert strategy.resumed == saved  # it loaded that checkpoint ...
    assert evaluator.steps[0] == (k + 1) * layers - 1  # ... and its steps went on from k * layers, not 0
    assert evaluator.calls == N - k  # nothing evaluated twice
    agent = strategy.agent
    assert agent.num_timesteps == N * layers
    assert agent.replay_buffer.size() == N * layers  # the buffer kept its k episodes and grew
    if kind != "sac":
        assert agent.action_noise.episodes == N
        assert agent.action_noise.sigma == pytest.approx(0.95 ** (N - WARMUP))
    assert outcomes(tmp_path) == reference(ctx, tmp_path_factory, kind)
    final = read_info(tmp_path / "agent")
    assert (final.evaluations, final.num_timesteps) == (N, N * layers)
    assert final.resumes == (rl_checkpoint.ResumePoint(k, k * layers, 0),)


# --- stopped after a row was written, before the checkpoint: the row is replayed -------------------

def _stop_at_checkpoint(monkeypatch: pytest.MonkeyPatch, nth: int) -> None:
    """The ``nth`` checkpoint write raises Ctrl-C: as a kill that lands after a row, before its checkpoint."""
    save, calls = rl_checkpoint.save_checkpoint, []

    def stopping(*args, **kwargs):
        calls.append(1)
        if len(calls) == nth:
            raise KeyboardInterrupt
        return save(*args, **kwargs)

    monkeypatch.setattr(rl_checkpoint, "save_checkpoint", stopping)


@pytest.mark.parametrize("n_envs", [1, 2])
def test_rows_written_after_the_checkpoint_are_replayed_not_evaluated(ctx, tmp_path: Path, tmp_path_factory,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      n_envs: int) -> None:
    expected = reference(ctx, tmp_path_factory, "ddpg", n_envs)
    _stop_at_checkpoint(monkeypatch, 3 if n_envs == 1 else 2)
    _, _, interrupted = search(ctx, tmp_path, n_envs=n_envs)
    monkeypatch.undo()
    rows = len(read_history(tmp_path / "history.csv"))
    saved = read_info(tmp_path / "agent")
    assert interrupted and rows == saved.evaluations + n_envs  # the last episodes' rows are past the checkpoint

    strategy, evaluator, _ = search(ctx, tmp_path, n_envs=n_envs)
    assert strategy.resumed == saved
    assert evaluator.calls == N - rows  # the rows past the checkpoint were not evaluated again
    assert outcomes(tmp_path) == expected  # ... nor recorded twice: the agent went on as if never stopped
    assert read_info(tmp_path / "agent").resumes[-1].replayed == n_envs


def test_a_batch_cut_short_is_completed(ctx, tmp_path: Path, tmp_path_factory,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With parallel workers a kill can fall inside a batch: the rows it has are replayed, the rest evaluated."""
    expected = reference(ctx, tmp_path_factory, "ddpg", 2)
    _stop_at_checkpoint(monkeypatch, 2)
    search(ctx, tmp_path, n_envs=2)
    monkeypatch.undo()
    lines = (tmp_path / "history.csv").read_text().splitlines(keepends=True)
    (tmp_path / "history.csv").write_text("".join(lines[:-1]))  # the batch's second result never arrived
    rows = len(lines) - 2

    strategy, evaluator, _ = search(ctx, tmp_path, n_envs=2)
    assert rows == strategy.resumed.evaluations + 1
    assert evaluator.calls == N - rows
    assert outcomes(tmp_path) == expected


def test_a_diverged_replay_keeps_the_row_and_records_nothing_twice(ctx, tmp_path: Path, monkeypatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    _stop_at_checkpoint(monkeypatch, 4)
    search(ctx, tmp_path)
    monkeypatch.undo()
    path = tmp_path / "history.csv"
    rows = list(csv.DictReader(path.open(newline="")))
    rows[-1]["keep"] = rows[0]["keep"]  # the row past the checkpoint no longer records what the agent proposes
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    before = path.read_text()

    with caplog.at_level(logging.WARNING, logger="search"):
        strategy, evaluator, _ = search(ctx, tmp_path)
    assert "proposed another policy" in caplog.text
    assert path.read_text().startswith(before)  # the row stays
    assert len(read_history(path)) == N
    assert evaluator.calls == N - len(rows) + 1  # its episode was evaluated for the agent, without a row
    assert strategy.agent.num_timesteps == N * len(ctx.graph)


# --- no checkpoint, or one this resume cannot continue ---------------------------------------------

def test_a_run_without_checkpoint_resumes_with_a_fresh_agent(ctx, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    search(ctx, tmp_path, interrupt_at=4)
    (tmp_path / "agent" / CHECKPOINT).unlink()  # a run folder from before checkpoints
    with caplog.at_level(logging.WARNING, logger="search"):
        strategy, evaluator, _ = search(ctx, tmp_path)
    assert "no agent checkpoint" in caplog.text
    assert strategy.resumed is None
    assert evaluator.calls == N - 3 and len(read_history(tmp_path / "history.csv")) == N
    assert strategy.agent.num_timesteps == (N - 3) * len(ctx.graph)


def test_a_checkpoint_of_another_worker_count_is_refused(ctx, tmp_path: Path) -> None:
    search(ctx, tmp_path, interrupt_at=4)
    before = (tmp_path / "history.csv").read_text()
    with pytest.raises(ConfigError, match="--workers 1"):
        search(ctx, tmp_path, n_envs=2)
    assert (tmp_path / "history.csv").read_text() == before


# --- a killed CLI search (acceptance 2) ------------------------------------------------------------

def test_killed_ddpg_search_resumes_its_agent(tmp_path: Path, tmp_path_factory, amc_cache: Path, ctx) -> None:
    out = tmp_path / "run"
    args = ["--budget", str(BUDGET), "--strategy", "ddpg", "--evaluations", str(N), "--warmup", str(WARMUP),
            "--out", str(out), "--quiet", "--threads", "1", "--no-export",
            "--score", "bn",  # the reference run's score (the CLI's default is reconstruct)
            "--no-baselines", "--select", "none"]  # as the reference run: the agent's own episodes only
    kill_search_when(args, out, amc_cache, lambda rows: len(rows) >= WARMUP + 1, timeout=120,
                     what=f"{WARMUP + 1} evaluations")
    before = (out / "history.csv").read_text().splitlines()
    killed_at = len(read_history(out / "history.csv"))
    assert WARMUP + 1 <= killed_at < N
    saved = read_info(out / "agent")
    # The first episode is always checkpointed, later ones at least CHECKPOINT_INTERVAL apart: the rows after
    # the checkpoint are replayed on resume (final.resumes below counts them).
    assert saved is not None and 1 <= saved.evaluations <= killed_at

    done = run_script(SEARCH_SCRIPT, *args, "--resume", cache=amc_cache)
    assert done.returncode == 0, done.stderr
    records = read_history(out / "history.csv")
    assert (out / "history.csv").read_text().splitlines()[: len(before)] == before
    assert [r.index for r in records] == list(range(N))  # exactly N rows, none lost or repeated
    assert outcomes(out) == reference(ctx, tmp_path_factory, "ddpg")  # the agent went on as if never killed
    layers = len(ctx.graph)
    final = read_info(out / "agent")
    assert (final.evaluations, final.num_timesteps, final.transitions) == (N, N * layers, N * layers)
    assert final.resumes == (rl_checkpoint.ResumePoint(saved.evaluations, saved.num_timesteps,
                                                       killed_at - saved.evaluations),)
    assert "resuming the ddpg agent" in (out / "run.log").read_text()
    with zipfile.ZipFile(out / "agent" / CHECKPOINT) as archive:
        assert json.loads(archive.read("state.json"))["num_timesteps"] == N * layers
