"""Issue 33, point 3: a ladder rung and the deploy rung with ``--workers 2`` run their re-scores on both Ray
workers (each row's ``pid``), with the scores of the serial path, and a killed rung resumes on the pool without
measuring a candidate twice."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from amc.context import ContextConfig
from search.config import SearchConfig
from search.history import read_history
from search.runner import run_search

# A Ray instance of its own: on the xdist worker of the other Ray tests, one after another.
pytestmark = [pytest.mark.usefixtures("cache_env"), pytest.mark.xdist_group("ray")]


def _config(out: Path, amc_cache: Path, **kwargs) -> SearchConfig:
    settings = dict(budget=0.3, strategy="random", evaluations=3, out=str(out), progress=False, export=False,
                    report=False, ladder=("finetune:1",), ladder_top_k=4, select="finetune:1", select_top_k=2,
                    select_samples=200, context=ContextConfig(cache_dir=str(amc_cache)))
    return SearchConfig(**{**settings, **kwargs})


def _measured(rows) -> dict[tuple[int, int, int], tuple]:
    """(evaluation, rung, repeat) -> what was measured (the scores the serial and the pool path must share)."""
    return {(r.index, r.rung, r.repeat): (r.accuracy, r.loss, r.reward, r.score, r.origin, tuple(r.keep))
            for r in rows}


def test_ladder_and_deploy_rungs_run_on_both_workers_with_the_serial_scores(tmp_path, amc_cache) -> None:
    serial_out = tmp_path / "serial"
    serial = run_search(_config(serial_out, amc_cache))
    full = read_history(serial_out / "history.csv")
    rung_rows = [r for r in full if r.rung > 0]
    assert Counter(r.rung for r in rung_rows) == {1: 4, 2: 6}  # 4 re-scores; 4 finalists + 2 noise repeats
    assert {r.pid for r in rung_rows} == {os.getpid()}  # no pool: measured here
    assert all(r.pid == 0 for r in full if r.rung == 0)  # the search's own rows record none

    # The same run killed after its first ladder row, resumed with two workers.
    pool_out = tmp_path / "pool"
    shutil.copytree(serial_out, pool_out)
    lines = (pool_out / "history.csv").read_text().splitlines()
    first_rung = next(i for i, r in enumerate(full) if r.rung > 0)
    (pool_out / "history.csv").write_text("\n".join(lines[: 1 + first_rung + 1]) + "\n")
    parallel = run_search(_config(pool_out, amc_cache, workers=2, resume=True))
    again = read_history(pool_out / "history.csv")

    keys = [(r.index, r.rung, r.repeat) for r in again]
    assert len(keys) == len(set(keys)) == len(full)  # nothing measured twice, nothing missing
    assert _measured(again) == _measured(full)  # the serial path's scores, candidate by candidate
    assert parallel.best.index == serial.best.index and parallel.best.rung == serial.best.rung == 2

    kept = full[first_rung]
    assert next(r for r in again if (r.index, r.rung) == (kept.index, kept.rung)).pid == os.getpid()
    on_pool = [r for r in again[first_rung + 1:]]
    assert on_pool and all(r.rung > 0 for r in on_pool)
    for rung in (1, 2):
        pids = {r.pid for r in on_pool if r.rung == rung}
        assert len(pids) == 2 and os.getpid() not in pids and 0 not in pids, (rung, pids)
    assert len({r.pid for r in on_pool}) == 2  # the same two workers for both rungs
