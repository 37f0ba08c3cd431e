"""The ``compare`` benchmark on cnn/digits: the protocol end to end, resume cell by cell, the summary's arithmetic."""

from __future__ import annotations

import dataclasses
import math
import statistics
import warnings
from io import StringIO

import pytest
from rich.console import Console
from scipy import stats

from amc.context import ContextConfig, build_context
from search.bench.compare import CompareSettings, compare, compare_markdown, compare_report, plan, read_cell
from search.bench.compare_summary import gain, groups, heat_values, verdict_lines, welch
from search.bench.headline import HeadlineCell

SETTINGS = CompareSettings(models=("cnn",), budgets=(0.5, 0.3), rows=("uniform", "random"), seeds=(0, 1),
                           evaluations=3, workers=1, finetune_samples=200, long_finetune_factor=2, long_budget=0.5,
                           latency_repeats=1, latency_run_time=0.02)


@pytest.fixture(scope="module")
def ctx(amc_cache):
    return build_context(ContextConfig(cache_dir=str(amc_cache)), progress=False)


def _welch_oracle(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Welch's interval as scipy's own test computes it (points)."""
    with warnings.catch_warnings():  # scipy warns where both rows are (nearly) constant
        warnings.simplefilter("ignore", RuntimeWarning)
        interval = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    return 100 * (statistics.mean(a) - statistics.mean(b)), 100 * interval.low, 100 * interval.high


@pytest.mark.slow
@pytest.mark.usefixtures("cache_env")
def test_the_protocol_runs_every_cell_resumes_and_sums_up_from_the_cell_files(ctx, tmp_path):
    root = tmp_path / "runs"
    seen = []
    built = []

    def context_of(model, resource):
        built.append((model, resource))
        return ctx

    run = compare(root, SETTINGS, context_of=context_of, progress=False, on_cell=lambda c, cached: seen.append(cached))
    todo = plan(SETTINGS)
    assert len(todo) == 2 * 2 * 2 and seen == [False] * 8 and built == [("cnn", "flops")]
    assert [(c.budget, c.row, c.seed) for c in run.cells] == [(b, r, s) for _, _, b, r, s in todo]
    for cell in run.cells:
        h = cell.headline
        assert 0 < h.flops_ratio <= cell.budget + 1e-9 and 0 < cell.params_ratio < 1 and h.latency_ratio > 0
        assert (cell.long_finetuned_test_accuracy is not None) == (cell.budget == 0.5)  # the longer fine-tune's budget
        assert cell.long_epochs == 2
    by = {(c.budget, c.row, c.seed): c for c in run.cells}
    # Baselines: the policy is found once, fine-tuned with every seed.
    assert by[0.5, "uniform", 0].headline.channels == by[0.5, "uniform", 1].headline.channels
    assert by[0.5, "uniform", 0].headline.test_accuracy == by[0.5, "uniform", 1].headline.test_accuracy
    assert by[0.5, "random", 0].headline.evaluations == 3 + 2  # the baselines first, then its own

    # A killed run: one cell lost whole, another killed after its headline part. The rerun runs only those.
    lost = root / "cnn" / "budget0.3" / "random" / "seed1"
    (lost / "compare.json").unlink()
    (lost / "cell.json").unlink()
    (root / "cnn" / "budget0.5" / "uniform" / "seed1" / "compare.json").unlink()
    seen.clear()
    again = compare(root, SETTINGS, context_of=context_of, progress=False,
                    on_cell=lambda c, cached: seen.append(cached))
    redone = [(b, r, s) for (_, _, b, r, s), cached in zip(todo, seen) if not cached]
    assert redone == [(0.5, "uniform", 1), (0.3, "random", 1)]
    assert again.cells[todo.index(("cnn", "flops", 0.5, "uniform", 1))].headline == by[0.5, "uniform", 1].headline
    redo = again.cells[todo.index(("cnn", "flops", 0.3, "random", 1))]
    assert redo.headline.channels == by[0.3, "random", 1].headline.channels  # its search was read back, not rerun
    # A finished run builds no context at all.
    built.clear()
    assert compare(root, SETTINGS, context_of=context_of, progress=False).cells == again.cells and built == []

    # The summary, recomputed from the cell files.
    cells = [read_cell(p) for p in sorted(root.rglob("compare.json"))]
    assert sorted(cells, key=lambda c: (c.budget, c.row, c.seed)) == sorted(again.cells,
                                                                           key=lambda c: (c.budget, c.row, c.seed))
    text = compare_markdown(SETTINGS, again, command="python scripts/bench.py compare", machine="test machine",
                            plot="docs/compare.png")
    for budget in (0.5, 0.3):
        tuned = {row: [c.headline.finetuned_test_accuracy for c in cells if c.budget == budget and c.row == row]
                 for row in ("uniform", "random")}
        diff, low, high = _welch_oracle(tuned["random"], tuned["uniform"])
        found = gain(groups(cells)["cnn", f"{budget:g}"], "random")
        assert found.baseline == "uniform"  # the only baseline asked
        assert found.diff == pytest.approx(diff, abs=1e-9)
        if math.isnan(low):  # both rows without spread: scipy gives no interval, ours is the point
            assert found.low == found.high == pytest.approx(diff)
        else:
            assert (found.low, found.high) == pytest.approx((low, high), abs=1e-6)
        row = [line for line in text.splitlines() if line.startswith(f"| cnn | {budget:g} | random |")][0]
        mean, std = 100 * statistics.mean(tuned["random"]), 100 * statistics.stdev(tuned["random"])
        assert f"| {mean:.2f} ± {std:.2f} |" in row and f"{found.text()} vs uniform: {found.verdict} |" in row
        assert found.verdict == ("paid" if found.low > 0 else "lost" if found.high < 0 else "no difference")
    assert "1 epoch(s) of SGD, cosine schedule from lr 0.01, on the same 200 training images" in text
    assert "fine-tune of 1 epoch(s) against 2 epochs" in text and "- the ranking " in text
    # The report writes the section and the heat map from the finished cells (no context built).
    markdown = tmp_path / "BENCHMARKS.md"
    compare_report(root, SETTINGS, threads=1, data_dir=None, command="python scripts/bench.py compare",
                   markdown=markdown, console=Console(file=StringIO()), context_of=context_of)
    written = markdown.read_text()
    assert "<!-- bench:compare -->" in written and "![search minus best baseline](docs/compare.png)" in written
    assert (tmp_path / "docs" / "compare.png").stat().st_size > 0 and built == []


def _cell(model: str, budget: float, row: str, seed: int, tuned: float, chosen: str = "search"):
    head = HeadlineCell(budget=budget, row=row, seed=seed, val_accuracy=0.8, test_accuracy=0.7,
                        finetuned_test_accuracy=tuned, flops_ratio=budget, latency_ratio=0.5, search_seconds=1.0,
                        evaluations=10, distinct=10, seconds=2.0, chosen=chosen)
    return dataclasses.make_dataclass("Cell", ["model", "resource", "budget", "row", "seed", "params_ratio",
                                               "long_finetuned_test_accuracy", "headline"])(
        model, "flops", budget, row, seed, 0.5, None, head)


def test_the_verdicts_and_the_heat_map_hold_the_default_row_to_the_best_baseline():
    cells = [_cell("mobilenetv2", 0.15, "uniform", s, 0.90 + s / 1000) for s in range(3)] \
        + [_cell("mobilenetv2", 0.15, "tp-global", s, 0.88) for s in range(3)] \
        + [_cell("mobilenetv2", 0.15, "default", s, 0.915 + s / 1000) for s in range(3)] \
        + [_cell("mobilenetv2", 0.3, "uniform", s, 0.92 + s / 1000) for s in range(3)] \
        + [_cell("mobilenetv2", 0.3, "default", s, 0.925 - 6 * s / 1000, "baseline:uniform") for s in range(3)]
    found = gain(groups(cells)["mobilenetv2", "0.15"], "default")
    # Both rows have the same spread (std 0.1 points): Welch's df is 4, the half width t(0.975, 4) * sqrt(2/3) * 0.1.
    assert found.baseline == "uniform" and found.diff == pytest.approx(1.5) and found.df == pytest.approx(4)
    assert found.high - found.diff == pytest.approx(2.776445 * math.sqrt(2 / 3) * 0.1, rel=1e-5)
    assert all(math.isnan(v) for v in welch([0.9], [0.8])[1:])  # one seed: no interval
    text = "\n".join(verdict_lines(cells))
    assert "- mobilenetv2, budget 0.15: default minus uniform +1.50 [+1.27, +1.73] points; the search **paid**" in text
    assert "- mobilenetv2, budget 0.3: default minus uniform -0.20 [" in text and "**did not pay**" in text
    assert "+1.50 points; target >= +1: **met**" in text  # issue 37's gain at 0.15 on mobilenetv2
    assert "-0.20 points; target >= -0.1: **missed**" in text and "baseline:uniform (3 of 3)" in text
    models, budgets, gains = heat_values(cells)
    assert (models, budgets) == (["mobilenetv2"], ["0.15", "0.3"])
    assert [g.diff for g in gains[0]] == pytest.approx([1.5, -0.2])


@pytest.mark.parametrize(("args", "expected"), [
    (["--models", "resnet20,foo"], "argument --models: unknown model 'foo'; use some of resnet20, mobilenetv2, vit"),
    (["--rows", "uniform,tpe"], "argument --rows: unknown row 'tpe'"),
    (["--latency-budget", "2"], "argument --latency-budget: must be a number in (0, 1]"),
    (["--budgets", "0.3", "--long-budget", "0.15"], "--long-budget 0.15 is not one of the budgets 0.3: pick one"),
])
def test_the_command_refuses_bad_options_on_one_line(args, expected, tmp_path, capsys):
    from search.cli.bench import main

    try:
        code = main(["compare", *args, "--root", str(tmp_path / "root"), "--markdown", str(tmp_path / "B.md")])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "root").exists() and not (tmp_path / "B.md").exists()  # nothing started
