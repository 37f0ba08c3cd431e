"""The multi-fidelity ladder on cnn/digits: rungs in ladder.csv, the winner as the run's policy, resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from amc.context import ContextConfig
from amc.policy import Policy
from search.config import SearchConfig
from search.history import read_history
from search.ladder import read_ladder
from search.runner import run_search

# One worker runs the module: its search fixture is shared (make test uses --dist loadgroup).
pytestmark = [pytest.mark.usefixtures("cache_env"), pytest.mark.xdist_group("ladder")]
LADDER = ("finetune:2", "finetune:4")


def _config(out: Path, amc_cache: Path, **kwargs) -> SearchConfig:
    settings = dict(budget=0.4, strategy="random", evaluations=10, out=str(out), progress=False, export=False,
                    ladder=LADDER, ladder_top_k=4, context=ContextConfig(cache_dir=str(amc_cache)))
    return SearchConfig(**{**settings, **kwargs})


@pytest.fixture(scope="module")
def laddered(tmp_path_factory, amc_cache):
    """One finished search with a two-rung ladder: (its folder, its SearchResult)."""
    out = tmp_path_factory.mktemp("ladder") / "run"
    return out, run_search(_config(out, amc_cache))


def test_rungs_re_rank_the_best_candidates_and_the_winner_is_the_policy(laddered) -> None:
    out, result = laddered
    rows = read_ladder(out / "ladder.csv")
    records = read_history(out / "history.csv")
    assert len(records) == 10  # the search itself is unchanged
    first, second = [r for r in rows if r.rung == 1], [r for r in rows if r.rung == 2]
    assert [r.score for r in first] == ["finetune:2"] * 4 and [r.score for r in second] == ["finetune:4"] * 2
    # Rung 1 re-scores the search's 4 best records; rung 2 the better half of rung 1.
    by_reward = sorted(records, key=lambda r: (-r.reward, r.cost, r.index))
    assert {r.source for r in first} == {r.index for r in by_reward[:4]}
    ranked = sorted(first, key=lambda r: -r.accuracy)
    assert {r.source for r in second} <= {r.source for r in ranked[:3]}  # ties broken by cost
    winner = max(second, key=lambda r: r.accuracy)
    policy = Policy.load(out / "policy.json")
    assert list(policy.keep.values()) == pytest.approx(list(winner.keep))
    assert result.best.index == winner.source
    assert all(r.seconds > 0 and 0 <= r.accuracy <= 1 for r in rows)


def test_a_killed_ladder_resumes_without_scoring_a_candidate_twice(laddered, tmp_path, amc_cache) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(laddered[0], out)
    full = read_ladder(out / "ladder.csv")
    lines = (out / "ladder.csv").read_text().splitlines()
    # As a kill leaves it: the header, three finished rows and half of the fourth.
    (out / "ladder.csv").write_text("\n".join(lines[:4]) + "\n" + lines[4][: len(lines[4]) // 2])
    run_search(_config(out, amc_cache, resume=True))
    again = read_ladder(out / "ladder.csv")
    keys = [(r.rung, r.score, r.source) for r in again]
    assert len(keys) == len(set(keys)) == len(full)  # each candidate scored once per rung
    assert {k: r.accuracy for k, r in zip(keys, again)} == {(r.rung, r.score, r.source): r.accuracy for r in full}
    assert len(read_history(out / "history.csv")) == 10  # nothing of the search evaluated again
    before = (out / "ladder.csv").read_text()
    run_search(_config(out, amc_cache, resume=True))  # a finished ladder: nothing more to score
    assert (out / "ladder.csv").read_text() == before


def test_bad_ladder_values_are_refused(tmp_path, amc_cache) -> None:
    from amc.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown score 'finetune:x'"):
        _config(tmp_path / "a", amc_cache, ladder=("finetune:x",))
    with pytest.raises(ConfigError, match="--ladder-top-k must be a positive integer, got 0"):
        _config(tmp_path / "b", amc_cache, ladder_top_k=0)
