"""The depth benchmark's machinery (``scripts/bench.py depth``) on tiny settings: resnet20 on digits (the digits cnn
has no removable block), one seed, a tiny latency table, in-process timing: cells, table, resume."""

from __future__ import annotations

import json

import pytest

import search.bench.deployed as deployed
from search.bench.depth import ROWS, DepthSettings, depth_bench, depth_markdown, plan

pytestmark = pytest.mark.xdist_group("bench-depth")

TINY = DepthSettings(models=("resnet20",), budgets=(0.8,), seeds=(0,), evaluations=3, round_to=1, finetune_epochs=1,
                     finetune_samples=64, tp_iterations=4, latency_processes=1, latency_repeats=1, sample_time=0.001,
                     dataset="digits", base_epochs=1, val_limit=64,
                     latency_table=(("passes", 1), ("grid", 3), ("min_run_time", 0.001), ("model_run_time", 0.005),
                                    ("calibration_keeps", (0.5,)), ("calibration_random", 2),
                                    ("calibration_rounds", 2)))


def test_plan_has_every_row_for_each_seed() -> None:
    cells = plan(DepthSettings(budgets=(0.4, 0.5), seeds=(0, 1, 2)))
    assert len(cells) == 2 * 3 * len(ROWS) and cells[0] == ("resnet20", 0.4, "width", 0)
    assert [row for *_, row, seed in cells[:len(ROWS)]] == [r[0] for r in ROWS]


@pytest.mark.slow
def test_depth_bench_writes_its_cells_and_table_and_resumes(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))  # its own base model (1 epoch) and tables
    timed = []

    def in_this_process(policy_path, processes, **kwargs):  # the same timing, without the processes' start-up
        timed.append(policy_path)
        return [deployed.deployed_latency(policy_path, **kwargs) for _ in range(processes)]

    monkeypatch.setattr(deployed, "in_fresh_processes", in_this_process)
    cells, bases = depth_bench(tmp_path / "bench", TINY, progress=False)
    assert [c.row for c in cells] == [r[0] for r in ROWS] and 0 < bases["resnet20"] <= 1
    for cell in cells:
        folder = tmp_path / "bench" / "resnet20" / "batch1" / "budget0.8" / cell.row / "seed0"
        assert json.loads((folder / "cell.json").read_text())["row"] == cell.row
        assert cell.predicted_ratio <= cell.searched_budget + 1e-9 and cell.measured_ratio > 0
        assert 0 < cell.flops_ratio < 1 and cell.searched_budget >= 0.8
    by_row = {c.row: c for c in cells}
    assert by_row["width"].dropped == () and by_row["uniform"].dropped == ()
    assert len(timed) == len(ROWS)  # one timing per policy
    text = depth_markdown(cells, TINY, command="bench.py depth", machine="test", bases=bases)
    assert "**resnet20, budget 0.8 (batch 1)**" in text and all(f"| {r[0]} |" in text for r in ROWS)

    def no_work(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    import search.bench.depth as depth_module

    monkeypatch.setattr(depth_module, "searched", no_work)
    monkeypatch.setattr(depth_module, "_tp_policy", no_work)
    seen = []
    again, _ = depth_bench(tmp_path / "bench", TINY, progress=False, on_cell=lambda c, cached: seen.append(cached))
    assert again == cells and seen == [True] * len(ROWS) and len(timed) == len(ROWS)


def _cell(row: str, seed: int, finetuned: float, measured: float, searched: float = 0.4):
    from search.bench.depth import DepthCell

    return DepthCell(model="resnet20", batch_size=1, budget=0.4, row=row, seed=seed, val_accuracy=0.5,
                     test_accuracy=0.5, finetuned_test_accuracy=finetuned, predicted_ratio=searched,
                     measured_ratio=measured, flops_ratio=0.3, dropped=("layers.2",) if row == "depth" else (),
                     searched_budget=searched, search_seconds=1.0, evaluations=3, seconds=2.0)


def test_verdicts_are_the_issue_targets_computed_from_the_cells() -> None:
    from search.bench.depth import verdict_lines

    met = [_cell("depth", s, 0.92 + 0.001 * s, 0.41) for s in (0, 1, 2)]
    met += [_cell("width", s, 0.91, 0.47, searched=0.6) for s in (0, 1, 2)]
    met += [_cell("tp-global", s, 0.905, 0.47, searched=0.6) for s in (0, 1, 2)]
    lines = verdict_lines(met)
    assert len(lines) == 3 and all("**met**" in line for line in lines), lines
    assert "measures 0.410 of the base's latency, +2.5% from the budget 0.4" in lines[0]
    assert "width-only measures 0.470 (+17.5%)" in lines[0]
    assert "+1.60 points after the fine-tune, mean of 3 seed(s)" in lines[1]  # mean(92.0, 92.1, 92.2) - 90.5

    # The depth row stuck above the budget, under 1 point above tp-global and below width-only: each missed.
    missed = [_cell("depth", 0, 0.9, 0.47, searched=0.505), _cell("width", 0, 0.91, 0.47, searched=0.6),
              _cell("tp-global", 0, 0.895, 0.47, searched=0.6)]
    lines = verdict_lines(missed)
    assert all("**missed**" in line for line in lines), lines
    assert "+17.5% from the budget" in lines[0] and "searched at 0.505" in lines[0]
    assert "+0.50 points" in lines[1] and "-1.00 points" in lines[2]
    assert verdict_lines(missed[1:]) == []  # no depth row, nothing to judge
