"""``--resource latency`` through the search: every strategy gets the measured-latency cost model."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

import amc.cost.latency
import amc.cost.timing
from amc.apply import apply_policy, context_config_of
from amc.context import ContextConfig
from amc.errors import BudgetError
from amc.cost.latency import LatencyConfig
from amc.pruning.policy import Policy
from search.config import SearchConfig
from search.history import read_history
from search.runner import run_search

pytestmark = pytest.mark.usefixtures("cache_env")
BUDGET = 0.9

# Batch 64: the digits cnn at batch 1 is mostly fixed overhead (a budget near 0.9 can be out of reach).
FAST = LatencyConfig(batch_size=64, passes=1, grid=3, min_run_time=0.001, model_run_time=0.005, calibration_keeps=(0.5,),
                     calibration_random=2, calibration_rounds=2)


@pytest.fixture(scope="module")
def latency_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("latency-tables")


def _config(out: Path, amc_cache: Path, latency_dir: Path, **kwargs) -> SearchConfig:
    context = ContextConfig(cache_dir=str(amc_cache), resource="latency",
                            latency=dataclasses.replace(FAST, cache_dir=str(latency_dir)))
    values = dict(budget=BUDGET, evaluations=6, warmup=2, out=str(out), progress=False, context=context,
                  baselines=False)  # the strategies' own rows (test_baselines.py: the baselines)
    values.update(kwargs)
    return SearchConfig(**values)


@pytest.mark.parametrize("strategy", ["optuna", "random", "ddpg"])
def test_latency_search_meets_the_predicted_budget_and_reports_all_three_ratios(
        strategy, tmp_path, amc_cache, latency_dir):
    result = run_search(_config(tmp_path / "run", amc_cache, latency_dir, strategy=strategy))
    rows = read_history(tmp_path / "run" / "history.csv")
    assert len(rows) == 6
    assert all(row.cost_ratio <= BUDGET + 1e-9 for row in rows)
    metrics = Policy.load(tmp_path / "run" / "policy.json").metrics
    assert metrics["latency_ratio_predicted"] == pytest.approx(result.best.cost_ratio)
    assert result.best.cost_ratio <= BUDGET + 1e-9
    assert 0 < metrics["flops_ratio"] < 1 and 0 < metrics["latency_ratio_measured"]
    assert metrics["latency_ms_measured"] > 0 and metrics["base_latency_ms_measured"] > 0
    # the deployable program, loaded back from pruned.pt2, timed against the base exported the same way
    assert (tmp_path / "run" / "pruned.pt2").exists()
    assert metrics["latency_ms_measured_exported"] > 0 and metrics["base_latency_ms_measured_exported"] > 0
    assert metrics["latency_ratio_measured_exported"] == pytest.approx(
        metrics["latency_ms_measured_exported"] / metrics["base_latency_ms_measured_exported"])
    html = (tmp_path / "run" / "report.html").read_text()
    assert "latency ratio predicted / measured / measured, exported" in html
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["context"]["resource"] == "latency" and saved["context"]["latency"]["batch_size"] == 64


def test_policy_remembers_its_latency_settings(tmp_path, amc_cache, latency_dir):
    run_search(_config(tmp_path / "run", amc_cache, latency_dir, strategy="random", evaluations=2))
    policy = Policy.load(tmp_path / "run" / "policy.json")
    assert policy.resource == "latency"
    assert context_config_of(policy).latency == dataclasses.replace(FAST, cache_dir=str(latency_dir))


def test_unreachable_latency_budget_is_refused_before_searching(tmp_path, amc_cache, latency_dir):
    with pytest.raises(BudgetError, match=r"unreachable.*latency; use a budget >= 0\.\d+"):
        run_search(_config(tmp_path / "run", amc_cache, latency_dir, budget=0.01))
    assert not (tmp_path / "run").exists()  # nothing left behind


def test_a_machine_that_changed_speed_since_the_table_is_named(tmp_path, amc_cache, latency_dir, monkeypatch, caplog):
    def twice_as_slow(models, *args, **kwargs):  # the machine now runs at half the table's speed
        return {name: 2.0 * table_base[0] * (1.0 if name == "base" else 0.5) for name in models}

    table_base = []
    real_build = amc.cost.latency.build_latency_cost

    def build(*args, **kwargs):
        cost = real_build(*args, **kwargs)
        table_base.append(cost.measured_base)
        return cost

    monkeypatch.setattr(amc.cost.latency, "build_latency_cost", build)
    monkeypatch.setattr(amc.cost.timing, "compare_latency", twice_as_slow)
    with caplog.at_level(logging.WARNING):
        run_search(_config(tmp_path / "run", amc_cache, latency_dir, strategy="random", evaluations=2))
    metrics = Policy.load(tmp_path / "run" / "policy.json").metrics
    assert metrics["base_latency_drift"] == pytest.approx(1.0)
    assert metrics["latency_ratio_measured"] == pytest.approx(0.5)
    warning = next(r.getMessage() for r in caplog.records if "speed has changed" in r.getMessage())
    assert "+100%" in warning and "latency-" in warning and "delete" in warning


@pytest.mark.parametrize(("exported_ms", "warned"), [(1.0, True), (0.95, False)])
def test_a_pruned_model_that_measures_over_the_budget_is_named(tmp_path, amc_cache, latency_dir, monkeypatch, caplog,
                                                               exported_ms, warned):
    timed = []

    def fake(models, *args, **kwargs):  # eager well within the budget 0.9; the exported program 1.0 or 0.95
        timed.append(sorted(models))
        ms = {"base": 1.0, "pruned": 0.5, "base_exported": 1.0, "pruned_exported": exported_ms}
        return {name: ms[name] for name in models}

    monkeypatch.setattr(amc.cost.timing, "compare_latency", fake)
    with caplog.at_level(logging.WARNING):
        run_search(_config(tmp_path / "run", amc_cache, latency_dir, strategy="random", evaluations=2))
    assert timed == [["base", "base_exported", "pruned", "pruned_exported"]]  # all four in the same rounds
    metrics = Policy.load(tmp_path / "run" / "policy.json").metrics
    assert metrics["latency_ratio_measured"] == pytest.approx(0.5)
    assert metrics["latency_ratio_measured_exported"] == pytest.approx(exported_ms)
    warnings = [r.getMessage() for r in caplog.records if "above the budget" in r.getMessage()]
    if warned:  # 1.0 is more than 10% above 0.9; 0.95 is within the tolerance of the table's ratio error
        assert len(warnings) == 1 and "as the exported program measures 1.0000" in warnings[0]
        assert "above the budget 0.9 " in warnings[0] and "--budget" in warnings[0]
    else:
        assert warnings == []


def test_a_failed_export_still_writes_the_policy(tmp_path, amc_cache, latency_dir, monkeypatch, caplog):
    import search.outputs

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator in forward")

    monkeypatch.setattr(search.outputs, "export_pt2", broken)
    with caplog.at_level(logging.ERROR):
        run_search(_config(tmp_path / "run", amc_cache, latency_dir, strategy="random", evaluations=2))
    metrics = Policy.load(tmp_path / "run" / "policy.json").metrics
    assert not (tmp_path / "run" / "pruned.pt2").exists()
    assert metrics["latency_ratio_measured"] > 0 and "latency_ratio_measured_exported" not in metrics
    assert "pruned.pt2 not written" in caplog.text and "unsupported operator in forward" in caplog.text


def test_no_export_times_the_eager_models_only(tmp_path, amc_cache, latency_dir):
    run_search(_config(tmp_path / "run", amc_cache, latency_dir, strategy="random", evaluations=2, export=False))
    metrics = Policy.load(tmp_path / "run" / "policy.json").metrics
    assert not (tmp_path / "run" / "pruned.pt2").exists()
    assert metrics["latency_ratio_measured"] > 0 and "latency_ratio_measured_exported" not in metrics


def test_a_reapplied_latency_policy_reports_its_latency_ratio(tmp_path, amc_cache, latency_dir, monkeypatch):
    run_search(_config(tmp_path / "run", amc_cache, latency_dir, strategy="random", evaluations=2))
    policy = Policy.load(tmp_path / "run" / "policy.json")

    def no_timing(*args, **kwargs):
        raise AssertionError("the latency table was measured again")

    monkeypatch.setattr(amc.cost.latency, "_measure_entries", no_timing)  # the search's cached table is used
    applied = apply_policy(tmp_path / "run" / "policy.json", export=False, progress=False)
    assert applied.resource == "latency"
    assert applied.cost_ratio == pytest.approx(policy.metrics["latency_ratio_predicted"], abs=1e-12)
    assert applied.cost_ratio != pytest.approx(policy.metrics["flops_ratio"], abs=1e-3)  # not its FLOPs ratio
