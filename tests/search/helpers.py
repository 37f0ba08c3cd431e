"""Helpers shared by the search and script tests: subprocess runs of the scripts, history rows."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SEARCH_SCRIPT = REPO / "scripts" / "search.py"
APPLY_SCRIPT = REPO / "scripts" / "apply_policy.py"


def subprocess_env(cache: Path) -> dict[str, str]:
    """Environment of a script run: the session cache and one torch thread (the machine has 2 cores)."""
    return {**os.environ, "AMC_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_script(script: Path, *args: str, cache: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], cwd=REPO, env=subprocess_env(cache),
                          capture_output=True, text=True, timeout=timeout)


def history_rows(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))
