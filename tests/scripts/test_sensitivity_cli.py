"""scripts/sensitivity.py: curves and plot from the command line; bad input on one line."""

from __future__ import annotations

import pytest

from tests.search.helpers import REPO, run_script

SCRIPT = REPO / "scripts" / "sensitivity.py"


def test_writes_curves_and_plot(tmp_path, amc_cache):
    proc = run_script(SCRIPT, "--keeps", "0.25,0.5", "--out", str(tmp_path), "--quiet", cache=amc_cache)
    assert proc.returncode == 0, proc.stderr
    rows = (tmp_path / "sensitivity.csv").read_text().splitlines()
    assert rows[0] == "layer,keep,val_accuracy" and len(rows) == 1 + 6 * 3
    assert (tmp_path / "sensitivity.png").stat().st_size > 10_000
    assert "6 layers x 2 keep ratios" in proc.stdout


@pytest.mark.parametrize("args, needle", [(["--keeps", "0,0.5"], "--keeps"), (["--keeps", "abc"], "--keeps"),
                                          (["--model", "nope"], "nope"), (["--dataset", "x"], "--dataset")])
def test_bad_input_is_one_line(args, needle, tmp_path, amc_cache):
    proc = run_script(SCRIPT, *args, "--out", str(tmp_path / "o"), "--quiet", cache=amc_cache)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()
