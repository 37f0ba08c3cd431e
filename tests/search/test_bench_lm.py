"""The language-model benchmark's machinery (``scripts/bench.py lm``) on tiny settings: a 2-block ``tiny-lm``
trained 10 steps on a capped corpus, 50% and 70% unstructured and 50% N:M, one seed, 3 evaluations per search:
cells, exact sparsity, the baselines as the searches record them, resume, the markdown's arithmetic and targets."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from amc.data.lm_tokens import LMDataConfig
from amc.evaluation.lm_evaluator import LMEvalConfig
from amc.lm_train import LMTrainConfig
from search.bench.common import BenchError
from search.bench.lm import (
    ROWS,
    LMBenchSettings,
    LMCell,
    lm_bench,
    lm_markdown,
    nm_search_supported,
    plan,
    target_lines,
)
from search.history import read_history
from search.lm_baselines import OWL, UNIFORM

pytestmark = pytest.mark.xdist_group("bench-lm")

TINY = LMBenchSettings(sparsities=(0.5, 0.7), nm_sparsities=(0.5,), seeds=(0,), evaluations=3, report_windows=16,
                       model_kwargs=(("dim", 32), ("depth", 2), ("heads", 2)),
                       data=LMDataConfig(seq_len=32, vocab_size=300, calibration=0.2, heldout=0.2, max_bytes=120_000),
                       train=LMTrainConfig(steps=10, batch_size=8, warmup=2, checkpoint_every=0, eval_windows=4),
                       eval=LMEvalConfig(calibration_windows=8, heldout_windows=16))


def test_plan_runs_the_found_once_rows_once_and_every_search_per_seed() -> None:
    settings = LMBenchSettings(seeds=(0, 1, 2))
    cells = plan(settings, nm_search=False)
    assert cells[0] == ("dense", 0.0, "dense", 0)
    assert len(cells) == 1 + 3 * (2 + 2 * 3) + 2  # N:M: uniform and OWL only while the product has no N:M search
    assert len(plan(settings, nm_search=True)) == 1 + 4 * (2 + 2 * 3)
    with pytest.raises(BenchError, match="heldout_windows"):
        LMBenchSettings(eval=LMEvalConfig(heldout_windows=None))
    with pytest.raises(BenchError, match="1.2"):
        LMBenchSettings(sparsities=(1.2,))


def test_the_lm_subcommand_builds_its_settings_and_refuses_a_bad_sparsity(tmp_path, monkeypatch, capsys) -> None:
    import search.bench.lm as lm_module
    from search.cli.bench import main

    seen = {}
    monkeypatch.setattr(lm_module, "lm_report", lambda root, settings, **kwargs: seen.update(settings=settings,
                                                                                            **kwargs))
    assert main(["lm", "--sparsities", "0.7", "--no-nm", "--seeds", "4", "--evaluations", "7", "--train-steps", "9",
                 "--criterion", "sparsegpt", "--root", str(tmp_path), "--markdown", str(tmp_path / "B.md")]) == 0
    settings = seen["settings"]
    assert (settings.sparsities, settings.nm_sparsities, settings.seeds, settings.evaluations) == ((0.7,), (), (4,), 7)
    assert settings.train.steps == 9 and settings.eval.criterion == "sparsegpt" and settings.eval.heldout_windows == 64
    assert seen["command"].startswith("python scripts/bench.py lm --sparsities 0.7")
    with pytest.raises(SystemExit):
        main(["lm", "--sparsities", "1.5"])
    assert "got '1.5'" in capsys.readouterr().err


def _cell(row: str, ppl: float, *, scored: float | None = None, seed: int = 0, kind: str = "unstructured") -> LMCell:
    return LMCell(kind=kind, sparsity=0.7, row=row, seed=seed, heldout_perplexity=ppl,
                  scored_perplexity=ppl if scored is None else scored, average_sparsity=0.7, decisions=("0.3000",),
                  chosen="search" if row in ("random", "default") else "", search_seconds=1.0, evaluations=3,
                  seconds=1.0)


def test_targets_are_met_or_missed_with_the_gap_and_the_reason() -> None:
    met = target_lines([_cell("uniform", 200.0), _cell("owl", 150.0), _cell("default", 130.0),
                        _cell("default", 140.0, seed=1)])
    assert "- default search <= OWL: **met**, 135.00 vs 150.00 (-10.0%)." in met
    assert "- default search <= 0.7 x uniform: **met**, 135.00 vs 140.00 (-3.6%)." in met
    missed = target_lines([_cell("uniform", 200.0), _cell("owl", 180.0), _cell("random", 175.0),
                           _cell("default", 170.0, scored=120.0)])
    owl_line, uniform_line = missed[2:]
    assert owl_line.startswith("- default search <= OWL: **met**, 170.00 vs 180.00 (-5.6%)")
    assert uniform_line.startswith("- default search <= 0.7 x uniform: **missed**, 170.00 vs 140.00 (+21.4%). Why: ")
    assert "best seed 170.00 (+21.4%)" in uniform_line and "random search 175.00" in uniform_line
    assert "on the windows it scored it meets it (120.00 vs 140.00)" in uniform_line
    assert "OWL itself is 0.90x uniform here" in uniform_line
    assert "not measured" in target_lines([_cell("uniform", 200.0)])[-1]


@pytest.mark.slow
def test_lm_bench_writes_exact_cells_and_resumes_without_recomputing(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))  # its own corpus tokens and 10-step model
    root = tmp_path / "bench"
    cells, base = lm_bench(root, TINY, progress=False)
    nm_search = nm_search_supported()
    assert [(c.kind, c.sparsity, c.row, c.seed) for c in cells] == plan(TINY, nm_search=nm_search)
    assert base["units"] and base["report_windows"] == 16 and (root / "base.json").is_file()
    by = {(c.kind, c.sparsity, c.row): c for c in cells}
    dense = by[("dense", 0.0, "dense")]
    assert dense.average_sparsity == 0.0 and dense.decisions == ("1.0000",) * len(base["units"])
    for cell in cells:
        folder = root / ("dense" if cell.kind == "dense" else f"{cell.kind}{cell.sparsity:g}/{cell.row}")
        assert json.loads((folder / f"seed{cell.seed}" / "cell.json").read_text())["row"] == cell.row
        if cell.kind == "unstructured":  # every policy removes exactly the target, counted from the masks
            assert cell.average_sparsity == pytest.approx(cell.sparsity, abs=1e-4)
        assert math.isfinite(cell.heldout_perplexity) and math.isfinite(cell.scored_perplexity)
    nm_uniform = by[("nm", 0.5, "uniform")]
    assert nm_uniform.decisions == ("2:4",) * len(base["units"]) and nm_uniform.average_sparsity == 0.5
    assert all(d in ("dense", "2:4", "1:4") for d in by[("nm", 0.5, "owl")].decisions)
    assert by[("nm", 0.5, "owl")].average_sparsity >= 0.5
    # uniform and OWL are the baselines each search recorded first, and the searches' best is no worse on the
    # windows they score
    for sparsity in TINY.sparsities:
        rows = read_history(root / f"unstructured{sparsity:g}" / "default" / "seed0" / "search" / "history.csv")
        first = {r.origin: r for r in rows[:2]}
        for row, origin in (("uniform", UNIFORM), ("owl", OWL)):
            assert by[("unstructured", sparsity, row)].decisions == tuple(f"{k:.4f}" for k in first[origin].keep)
            assert by[("unstructured", sparsity, row)].scored_perplexity == pytest.approx(math.exp(first[origin].loss),
                                                                                          rel=1e-5)
        for row in ("random", "default"):
            searched = by[("unstructured", sparsity, row)]
            assert searched.evaluations == 2 + TINY.evaluations and searched.search_seconds > 0
            assert searched.scored_perplexity <= by[("unstructured", sparsity, "uniform")].scored_perplexity + 1e-6
    text = lm_markdown(cells, TINY, command="bench.py lm", machine="test", base=base)
    assert "**70% average sparsity, unstructured**" in text and "**50% average sparsity, N:M**" in text
    assert all(f"| {row} |" in text for row in ROWS)
    u, d = by[("unstructured", 0.7, "uniform")], by[("unstructured", 0.7, "default")]
    assert f"| {d.heldout_perplexity / u.heldout_perplexity:.3f} |" in text
    assert "- default search <= OWL: **" in text and "x uniform: **" in text
    if not nm_search:
        assert "N:M random and default rows: not run" in text

    import search.bench.lm as lm_module

    def no_work(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(lm_module, "searched", no_work)
    monkeypatch.setattr(lm_module, "baselines", no_work)
    monkeypatch.setattr(lm_module, "_measured", no_work)
    seen = []
    again, _ = lm_bench(root, TINY, progress=False, on_cell=lambda c, cached: seen.append(cached))
    assert again == cells and seen == [True] * len(cells)
    # more seeds: only the new seed's searches run
    more = dataclasses.replace(TINY, seeds=(0, 1), sparsities=(0.5,), nm_sparsities=())
    monkeypatch.undo()
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))
    seen.clear()
    added, _ = lm_bench(root, more, progress=False, on_cell=lambda c, cached: seen.append(cached))
    assert seen == [True, True, True, True, True, False, False]
