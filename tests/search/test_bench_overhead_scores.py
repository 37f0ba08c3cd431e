"""``scripts/bench.py overhead`` (issue 33) on digits-sized settings: every score and criterion row, both
paths, and the markdown section it writes (its figures come from the real run on fashion-mnist)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from amc.errors import ConfigError
from search.bench.overhead import CRITERIA, PATHS, OverheadConfig, OverheadRow, _ratios, overhead_report


def _table(text: str) -> list[dict[str, str]]:
    """The rows of the section's markdown table, as header -> cell."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    headers = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(headers, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def test_the_report_has_every_score_and_criterion_on_both_paths(tmp_path) -> None:
    config = OverheadConfig(dataset="digits", models=("resnet20",), policies=1, finetune_steps=1,
                            search_evaluations=0, val_limit=40, bn_batches=1)
    markdown = tmp_path / "BENCHMARKS.md"
    out = io.StringIO()
    overhead_report(config, root=tmp_path / "runs", command="bench.py overhead (test)", markdown=markdown,
                    console=Console(file=out, width=200))
    text = markdown.read_text()
    assert "<!-- bench:overhead -->" in text and "## Evaluation overhead" in text
    assert "`bench.py overhead (test)`" in text and "digits" in text
    rows = _table(text)
    expected = {(score, criterion, path) for score, criterion in config.rows for path in PATHS}
    assert {(r["score"], r["criterion"], r["path"]) for r in rows} == expected
    assert {r["score"] for r in rows} == {"bn", "reconstruct", "finetune:1"}
    assert {r["criterion"] for r in rows} == {"l1", *CRITERIA}
    for r in rows:
        assert r["setup"] == "resnet20/digits (val 40, BN 1x128)"
        evaluation, floor = float(r["evaluation ms"]), float(r["floor ms"])
        assert evaluation > 0 and floor > 0
        assert r["neither"] == f"{100 * (1 - floor / evaluation):.1f}%" or abs(
            float(r["neither"].rstrip("%")) - 100 * (1 - floor / evaluation)) < 1.0  # cells are rounded ms
        if (r["score"], r["criterion"]) == ("bn", "l1"):
            assert r["vs bn / l1"] == "1.00x" and r["floor vs bn / l1"] == "1.00x"
        assert r["vs bn / l1"].endswith("(of l1)") == (r["criterion"] != "l1")
    assert "one evaluation vs the passes" in out.getvalue()  # the console table too


def test_the_ratios_compare_with_the_bn_l1_row_of_the_same_setup_and_path() -> None:
    rows = [OverheadRow("s", "bn", "l1", "after", 100.0, 90.0), OverheadRow("s", "bn", "l1", "before", 200.0, 90.0),
            OverheadRow("s", "reconstruct", "l1", "after", 150.0, 135.0),
            OverheadRow("s", "bn", "obd", "after", 110.0, 90.0), OverheadRow("t", "bn", "taylor", "after", 1.0, 1.0)]
    assert _ratios(rows, rows[2]) == ("1.50x", "1.50x")
    assert _ratios(rows, rows[3]) == ("1.10x (of l1)", "1.00x")
    assert _ratios(rows, rows[4]) == ("-", "-")  # no bn / l1 row in setup t
    assert rows[2].overhead == pytest.approx(0.1)


@pytest.mark.parametrize("settings", [{"val_limit": 0}, {"bn_batches": 0}, {"paths": ("later",)},
                                      {"models": ("vgg",)}, {"policies": 0}])
def test_bad_settings_are_one_line_errors(settings) -> None:
    with pytest.raises(ConfigError):
        OverheadConfig(**settings)
