"""The Ray evaluator pool: same results as local evaluation, actor replacement, clean shutdown."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from amc.context import ContextConfig, build_context
from amc.errors import ConfigError
from search.config import SearchConfig
from search.history import read_history
from search.parallel import RayEvaluatorPool, check_address
from search.runner import run_search
from tests import forkserver

ROOT = Path(__file__).resolve().parents[2]
# Ray instances of their own: these tests run on one xdist worker, one after another (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("ray")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cache_dir(amc_cache):
    path = str(amc_cache)
    previous = os.environ.get("AMC_CACHE_DIR")
    os.environ["AMC_CACHE_DIR"] = path  # actors read the cache through the environment
    yield path
    if previous is None:
        os.environ.pop("AMC_CACHE_DIR", None)
    else:
        os.environ["AMC_CACHE_DIR"] = previous


@pytest.fixture(scope="module")
def context(cache_dir):
    return build_context(ContextConfig(cache_dir=cache_dir), progress=False)


@pytest.fixture(scope="module")
def pool(context):
    """One pool for the module; it starts (and at the end stops) its own local Ray instance."""
    state = {k: v.clone() for k, v in context.model.state_dict().items()}
    pool = RayEvaluatorPool(context.config, workers=2, state_dict=state, graph=context.graph,
                            key=lambda p: context.evaluator.key(p.ratios(context.graph)))
    yield pool
    pool.close()


def _policies(context, n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    keeps = (0.2 + 0.8 * torch.rand(n, len(context.graph), generator=gen)).tolist()
    return [_policy(context, k) for k in keeps]


def _policy(context, keep):
    from amc.pruning.policy import Policy

    return Policy.from_ratios(context.graph, keep)


def test_pool_gives_the_local_results_in_order(pool, context) -> None:
    policies = _policies(context, 6)
    remote = pool.evaluate_many(policies)
    local = [context.evaluator.evaluate(p) for p in policies]
    assert [r.accuracy for r in remote] == [r.accuracy for r in local]
    assert [r.key for r in remote] == [r.key for r in local]
    again = pool.evaluate_many(policies[:2] + policies[:1])  # cached, and a duplicate within the batch
    assert all(r.cached for r in again)
    assert [r.accuracy for r in again] == [local[0].accuracy, local[1].accuracy, local[0].accuracy]


def test_killed_actor_is_replaced_and_its_work_redone(pool, context, tmp_path) -> None:
    import ray

    pids = ray.get([a.pid.remote() for a in pool.actors])
    restarts = pool.restarts
    out = tmp_path / "run"
    killed = threading.Event()

    def kill_when_running() -> None:
        while len(read_history(out / "history.csv")) < 4:
            time.sleep(0.05)
        os.kill(pids[0], signal.SIGKILL)  # mid-search: the actor dies with work in flight or queued
        killed.set()

    threading.Thread(target=kill_when_running, daemon=True).start()
    config = SearchConfig(budget=0.3, strategy="random", evaluations=30, out=str(out), progress=False,
                          export=False, context=context.config, baselines=False)
    result = run_search(config, context=context, evaluator=pool, batch_size=2)
    assert killed.is_set()
    assert pool.restarts >= restarts + 1
    records = read_history(out / "history.csv")
    assert result.evaluations == 30 and len(records) == 30
    assert sorted(r.index for r in records) == list(range(30))  # no loss, no duplicates


@pytest.mark.parametrize("strategy", ["optuna", "ddpg"])
def test_batched_strategies_account_for_every_evaluation(pool, context, tmp_path, strategy) -> None:
    config = SearchConfig(budget=0.3, strategy=strategy, evaluations=15, warmup=4, out=str(tmp_path / strategy),
                          progress=False, export=False, context=context.config, baselines=False)
    run_search(config, context=context, evaluator=pool, batch_size=pool.workers)
    records = read_history(tmp_path / strategy / "history.csv")
    assert len(records) == 15
    assert sorted(r.index for r in records) == list(range(15))
    assert all(r.cost_ratio <= 0.3 + 1e-9 for r in records)


def test_unreachable_address_fails_fast() -> None:
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="127.0.0.1:1"):
        check_address("127.0.0.1:1")
    with pytest.raises(ConfigError, match="host:port"):
        check_address("nonsense")
    assert time.perf_counter() - start < 30


def test_cli_refuses_bad_workers_and_unreachable_address(cache_dir, tmp_path) -> None:
    env = {**os.environ, "AMC_CACHE_DIR": cache_dir, "OMP_NUM_THREADS": "1"}
    for args, needle in ((["--workers", "0"], "'0'"), (["--workers", "-2"], "'-2'"),
                         (["--ray-address", "127.0.0.1:1"], "127.0.0.1:1")):
        start = time.perf_counter()
        proc = forkserver.run([sys.executable, "scripts/search.py", "--budget", "0.3", "--quiet",
                               "--out", str(tmp_path / "x"), *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
        assert time.perf_counter() - start < 30
        assert not (tmp_path / "x").exists()


def test_optuna_trials_get_their_own_results_with_a_pool(pool, context, tmp_path) -> None:
    """Results arrive in completion order; each trial must still be told its own policy's accuracy."""
    import optuna

    out = tmp_path / "optuna"
    config = SearchConfig(budget=0.3, strategy="optuna", evaluations=12, out=str(out), progress=False,
                          export=False, context=context.config, baselines=False)
    run_search(config, context=context, evaluator=pool, batch_size=4)
    by_step = {r.step: r for r in read_history(out / "history.csv")}
    study = optuna.load_study(study_name=f"amc-search/{out.name}", storage=f"sqlite:///{out / 'study.db'}")
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 12
    for trial in trials:
        record = by_step[trial.number]
        assert trial.value == record.reward and trial.user_attrs["keep"] == list(record.keep)


def test_a_pool_that_does_not_fit_the_free_cpus_is_refused(pool, context) -> None:
    with pytest.raises(ConfigError, match="needs 1 CPUs"):  # the module's pool holds both CPUs
        RayEvaluatorPool(context.config, workers=1)
