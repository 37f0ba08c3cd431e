"""Searches on Ray instances of their own: a two-node cluster joined through --ray-address, and the local
instance a search with --workers starts (and leaves nothing of)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from amc.context import ContextConfig
from search.history import read_history
from tests import forkserver

ROOT = Path(__file__).resolve().parents[2]
# Ray instances of their own: these tests run on one xdist worker, one after another (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("ray")


def test_workers_that_cannot_start_give_a_clear_error(amc_cache) -> None:
    import ray

    from search.parallel import RayEvaluatorPool, WorkerError

    assert not ray.is_initialized()
    config = ContextConfig(cache_dir=str(amc_cache))
    with pytest.raises(WorkerError, match="failed to start"):
        RayEvaluatorPool(config, workers=1, state_dict={"not.a.weight": __import__("torch").zeros(1)})
    assert not ray.is_initialized()  # the pool shut down the instance it had started


@pytest.fixture()
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    assert not ray.is_initialized()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()  # stops exactly the two nodes this test started


def test_search_through_ray_address_uses_both_nodes(cluster, tmp_path, amc_cache) -> None:
    cache = amc_cache  # the session's trained base model
    out = tmp_path / "run"
    env = {**os.environ, "AMC_CACHE_DIR": str(cache), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "OMP_NUM_THREADS": "1"}
    proc = forkserver.run(
        [sys.executable, "scripts/search.py", "--budget", "0.3", "--strategy", "random", "--evaluations", "10",
         "--ray-address", cluster.address, "--out", str(out), "--quiet", "--no-export", "--score", "bn",
         "--no-baselines", "--select", "none"],  # the evaluations' rows only
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_history(out / "history.csv")
    assert len(records) == 10 and sorted(r.index for r in records) == list(range(10))
    log = (out / "run.log").read_text()
    assert "Ray pool ready: 2 workers" in log  # one worker per cluster CPU, one CPU on each node


def _ray_processes() -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return {int(line.split()[0]) for line in out.splitlines()[1:]
            if any(tag in line for tag in ("ray::", "raylet", "gcs_server", "ray/dashboard", "default_worker.py"))}


def test_cli_with_two_workers_completes_and_leaves_no_ray_process(amc_cache, tmp_path) -> None:
    """A search on a local Ray instance of its own (no other is running here: this module starts its per test)."""
    before = _ray_processes()  # any earlier test's instance still exiting
    out = tmp_path / "cli"
    env = {**os.environ, "AMC_CACHE_DIR": str(amc_cache), "OMP_NUM_THREADS": "1"}
    proc = forkserver.run(
        [sys.executable, "scripts/search.py", "--budget", "0.3", "--strategy", "optuna", "--workers", "2",
         "--evaluations", "8", "--out", str(out), "--quiet", "--no-export", "--score", "bn",
         "--no-baselines", "--select", "none"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(read_history(out / "history.csv")) == 8
    deadline = time.monotonic() + 30  # Ray's processes exit shortly after ray.shutdown() returns
    while not _ray_processes() <= before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _ray_processes() <= before, f"the search left Ray processes running: {_ray_processes() - before}"
