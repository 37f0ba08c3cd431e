"""The ``sensitivity`` strategy: curves into the run folder, one greedy policy recorded, resumable."""

from __future__ import annotations

import pytest

from amc.context import ContextConfig
from amc.pruning.policy import Policy
from search.config import SearchConfig
from search.history import read_history
from search.runner import run_search

pytestmark = pytest.mark.usefixtures("cache_env")


@pytest.mark.slow
def test_sensitivity_strategy_records_one_feasible_policy(tmp_path, amc_cache, monkeypatch):
    config = SearchConfig(budget=0.4, strategy="sensitivity", evaluations=50, out=str(tmp_path / "run"),
                          progress=False, export=False, context=ContextConfig(cache_dir=str(amc_cache)), baselines=False)
    result = run_search(config)
    out = tmp_path / "run"
    rows = read_history(out / "history.csv")
    assert len(rows) == 1 and rows[0].cost_ratio <= 0.4 + 1e-9
    assert (out / "sensitivity.csv").exists() and (out / "sensitivity.png").exists()
    lines = (out / "sensitivity.csv").read_text().splitlines()
    assert len(lines) == 1 + 6 * 10  # header + 6 layers x keeps 0.1..1.0
    assert Policy.load(out / "policy.json").meta["strategy"] == "sensitivity"
    assert result.best.accuracy > result.uniform.accuracy - 0.05  # a sensible policy, not a broken one

    # Resuming reads the curves back instead of measuring them again.
    import amc.analysis.sensitivity

    def no_measuring(*args, **kwargs):
        raise AssertionError("curves measured again on resume")

    monkeypatch.setattr(amc.analysis.sensitivity, "sensitivity_curves", no_measuring)
    (out / "history.csv").write_text((out / "history.csv").read_text().splitlines()[0] + "\n")
    run_search(SearchConfig(**{**config.__dict__, "resume": True}))
    assert len(read_history(out / "history.csv")) == 1
