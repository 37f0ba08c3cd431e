"""report.html opens in a real browser (headless Chromium) and shows its four parts, offline."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from amc.context import ContextConfig
from search.config import SearchConfig
from search.runner import run_search

# Its module fixtures are costly: one xdist worker runs the whole module (make test uses --dist loadgroup).
pytestmark = [pytest.mark.usefixtures("cache_env"), pytest.mark.xdist_group("report")]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--disable-extensions", "--disable-background-networking", "--hide-scrollbars"]


@pytest.fixture(scope="module")
def report(tmp_path_factory, amc_cache) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    run_search(SearchConfig(budget=0.5, strategy="random", evaluations=12, out=str(out), progress=False,
                            context=ContextConfig(cache_dir=str(amc_cache))))
    return out / "report.html"


def test_report_is_self_contained(report: Path) -> None:
    html = report.read_text()
    assert "http://" not in html and "https://" not in html  # nothing to fetch: it opens offline
    assert html.count('src="data:image/png;base64,') == 1
    for part in ("Search curve, per-layer widths, accuracy vs cost (with the Pareto front)", "Base vs pruned",
                 "latency b64 ms", "test acc"):
        assert part in html


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    dom = subprocess.run([CHROMIUM, *HEADLESS, "--dump-dom", report.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    # The browser parsed the page: the headings and the comparison table are in its DOM.
    assert "<h2>Search curve, per-layer widths, accuracy vs cost (with the Pareto front)</h2>" in dom
    assert "<h2>Base vs pruned</h2>" in dom and dom.count("<tr>") >= 3 + 6  # summary rows + table rows
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *HEADLESS, "--window-size=1400,2400", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2400, 1400)
    # The embedded figure was decoded and drawn: matplotlib's coloured lines and markers are on screen
    # (a missing image would leave only black text on white).
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    assert int((saturation > 0.3).sum()) > 2000
    # The figure's three panels sit side by side: coloured pixels span the page's width.
    cols = np.nonzero((saturation > 0.3).any(axis=0))[0]
    assert cols.min() < 500 and cols.max() > 1000
