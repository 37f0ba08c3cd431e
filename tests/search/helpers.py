"""Helpers shared by the search and script tests: subprocess runs of the scripts, history rows."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from tests import forkserver

REPO = Path(__file__).resolve().parents[2]
SEARCH_SCRIPT = REPO / "scripts" / "search.py"
APPLY_SCRIPT = REPO / "scripts" / "apply_policy.py"


def subprocess_env(cache: Path) -> dict[str, str]:
    """Environment of a script run: the session cache and one torch thread (the machine has 2 cores)."""
    return {**os.environ, "AMC_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_script(script: Path, *args: str, cache: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python script args`` in the repository with the session cache (forked from :mod:`tests.forkserver`)."""
    return forkserver.run([sys.executable, str(script), *args], cwd=REPO, env=subprocess_env(cache),
                          capture_output=True, text=True, timeout=timeout)


def refusal(argv: list[str], capsys) -> tuple[int, list[str]]:
    """``scripts/bench.py ARGV`` run in this process (:func:`search.cli.bench.main`): its exit status and stderr
    lines. For argument checks: a fresh process would pay Python and torch's start-up, ~3 s, per case."""
    from search.cli import bench

    try:
        code = bench.main(argv)
    except SystemExit as exit_:  # argparse's refusals exit
        code = exit_.code
    return code, capsys.readouterr().err.strip().splitlines()


def history_rows(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def kill_search_when(args: list[str], out: Path, cache: Path, until, *, timeout: float = 180,
                     what: str = "the kill point") -> None:
    """Runs ``scripts/search.py args`` and SIGKILLs it once ``until(records of out/history.csv)`` holds."""
    import signal
    import time

    from search.history import read_history

    proc = forkserver.Process([sys.executable, str(SEARCH_SCRIPT), *args], cwd=REPO, env=subprocess_env(cache),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not until(read_history(out / "history.csv")):
            assert proc.poll() is None, f"search ended before {what}: {proc.stderr.read()}"
            assert time.monotonic() < deadline, f"search did not reach {what} in {timeout:.0f} s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
