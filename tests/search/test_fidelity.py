"""The score-fidelity benchmark's machinery on cnn/digits: cells, resume, rank correlations, default choice, plot."""

from __future__ import annotations

import json

import pytest

from amc.context import ContextConfig, build_context
from search.bench.fidelity import (
    FidelitySettings,
    choose_default,
    choose_default_everywhere,
    fidelity_table,
    rank_correlations,
    run_fidelity,
    scatter,
)
from search.bench.markdown import ResultTable

pytestmark = pytest.mark.usefixtures("cache_env")
SMALL = FidelitySettings(budgets=(0.5,), policies=3, scores=("bn", "finetune:2"), finetune_samples=128, bootstrap=50)


@pytest.fixture(scope="module")
def ctx(amc_cache):
    return build_context(ContextConfig(cache_dir=str(amc_cache)), progress=False)


def test_cells_are_written_and_a_rerun_measures_only_what_is_missing(ctx, tmp_path) -> None:
    seen = []
    cells = run_fidelity(tmp_path, ctx, SMALL, on_cell=lambda c, cached: seen.append(cached))
    assert [c.policy for c in cells] == ["uniform", "tp-global", "random-0", "random-1", "random-2"]
    assert seen == [False] * 5
    for cell in cells:
        assert 0 < cell.cost_ratio <= 0.5 + 1e-9
        assert set(cell.scores) == {"bn", "finetune:2"} and all(0 <= v <= 1 for v in cell.scores.values())
        assert all(s > 0 for s in cell.seconds.values()) and 0 < cell.deployed <= 1
    uniform = cells[0]
    assert len(set(uniform.keep)) == 1
    saved = json.loads((tmp_path / "budget0.5" / "random-1" / "cell.json").read_text())
    assert saved["scores"] == cells[3].scores and saved["deployed"] == cells[3].deployed

    # A rerun reads every cell back; a score added later is the only thing measured.
    seen.clear()
    again = run_fidelity(tmp_path, ctx, SMALL, on_cell=lambda c, cached: seen.append(cached))
    assert seen == [True] * 5 and [c.scores for c in again] == [c.scores for c in cells]
    more = FidelitySettings(**{**SMALL.__dict__, "scores": ("bn", "finetune:2", "reconstruct")})
    seen.clear()
    extended = run_fidelity(tmp_path, ctx, more, on_cell=lambda c, cached: seen.append(cached))
    assert seen == [False] * 5
    assert all(c.scores["bn"] == old.scores["bn"] and c.deployed == old.deployed for c, old in zip(extended, cells))
    assert all("reconstruct" in c.scores for c in extended)

    table = fidelity_table(extended, more)
    assert [r[1] for r in table.rows] == ["bn", "finetune:2", "reconstruct"]
    assert all(r[2] == "5" for r in table.rows)
    png = scatter(extended, more, tmp_path / "fidelity.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rank_correlations_of_known_orders() -> None:
    up = rank_correlations([1, 2, 3, 4, 5, 6], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], bootstrap=200)
    assert up["spearman"][0] == pytest.approx(1.0) and up["kendall"][0] == pytest.approx(1.0)
    assert up["spearman"][1] == pytest.approx(1.0)  # every resample is perfectly ordered too
    down = rank_correlations([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], bootstrap=200)
    assert down["spearman"][0] == pytest.approx(-1.0)
    mixed = rank_correlations([1, 2, 3, 4, 5, 6, 7, 8], [2, 1, 4, 3, 6, 5, 8, 7], bootstrap=500)
    value, low, high = mixed["spearman"]
    assert 0.8 < value < 1 and low <= value <= high


def test_the_default_is_the_cheapest_score_within_0_05_of_the_best() -> None:
    table = ResultTable(title="", headers=("budget", "score", "policies", "Spearman", "Kendall tau", "s"), rows=(
        ("0.3", "bn", "32", "0.20 [0.0, 0.4]", "x", "0.10"),
        ("0.3", "finetune:10", "32", "0.71 [0.5, 0.8]", "x", "0.90"),
        ("0.3", "finetune:50", "32", "0.74 [0.6, 0.9]", "x", "4.00"),
        ("0.3", "reconstruct", "32", "0.60 [0.4, 0.8]", "x", "0.30"),
        ("0.5", "bn", "32", "0.90 [0.8, 1.0]", "x", "0.10")))
    assert choose_default(table, 0.3) == "finetune:10"
    assert choose_default(table, 0.5) == "bn"
    assert choose_default(table, 0.7) is None
    # At every budget: a score must be measured and within 0.05 of the best at each (bn is far off at 0.3).
    assert choose_default_everywhere(table, (0.3, 0.5)) is None  # finetune:10 has no 0.5 row
    both = ResultTable(title="", headers=table.headers, rows=(*table.rows, ("0.5", "finetune:10", "32",
                                                                            "0.86 [0.7, 0.9]", "x", "0.90")))
    assert choose_default_everywhere(both, (0.3, 0.5)) == "finetune:10"
    assert choose_default_everywhere(both, (0.5,)) == "bn"
