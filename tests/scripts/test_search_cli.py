"""``scripts/search.py`` at the command line: bad input is one clear line and exit code 2 (acceptance 7)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from search.history import read_history
from tests import forkserver
from tests.search.helpers import REPO, SEARCH_SCRIPT, history_rows, run_script, subprocess_env

torch.set_num_threads(1)
# Its module fixtures are costly: one xdist worker runs the whole module (make test uses --dist loadgroup).
pytestmark = [pytest.mark.usefixtures("cache_env"), pytest.mark.xdist_group("search-cli")]

# id -> (arguments, the bad value the message must name). "{out}" is replaced by a fresh folder under tmp.
BAD_ARGS: dict[str, tuple[list[str], str]] = {
    "budget-zero": (["--budget", "0", "--out", "{out}"], "0"),
    "budget-above-one": (["--budget", "1.5", "--out", "{out}"], "1.5"),
    "budget-not-a-number": (["--budget", "abc", "--out", "{out}"], "abc"),
    "strategy": (["--strategy", "foo", "--out", "{out}"], "foo"),
    "sampler": (["--sampler", "foo", "--out", "{out}"], "foo"),
    "model": (["--model", "nosuchmodel", "--out", "{out}"], "nosuchmodel"),
    "budget-unreachable": (["--budget", "0.01", "--out", "{out}"], "0.01"),
    "out-unwritable": (["--out", "/proc/forbidden"], "/proc/forbidden"),
    "evaluations-zero": (["--evaluations", "0", "--out", "{out}"], "0"),
    "val-limit-zero": (["--val-limit", "0", "--out", "{out}"], "--val-limit"),
    "epochs-zero": (["--epochs", "0", "--out", "{out}"], "--epochs"),
    "toml-unknown-key": (["--config", "{toml}", "--out", "{out}"], "nosuchkey"),
    "score": (["--score", "finetune:0", "--out", "{out}"], "finetune:0"),
    "depth-without-blocks": (["--depth", "--out", "{out}"], "--depth"),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory,
             amc_cache: Path) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Every case of :data:`BAD_ARGS`, run two at a time (each pays Python + torch start-up)."""
    root = tmp_path_factory.mktemp("bad-cli")
    toml = root / "unknown.toml"
    toml.write_text('budget = 0.5\nnosuchkey = 1\n')

    def run(case: str) -> tuple[Path, subprocess.CompletedProcess]:
        out = root / case
        args = [a.format(out=out, toml=toml) for a in BAD_ARGS[case][0]]
        return out, run_script(SEARCH_SCRIPT, *args, "--quiet", cache=amc_cache, timeout=120)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(BAD_ARGS, pool.map(run, BAD_ARGS)))


def _check_clean_failure(case: str, bad_runs) -> list[str]:
    out, done = bad_runs[case]
    bad_value = BAD_ARGS[case][1]
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    assert bad_value in done.stderr
    assert not out.exists()  # nothing created for a run that never started
    assert done.stdout == ""
    return done.stderr.strip().splitlines()


@pytest.mark.parametrize("case", BAD_ARGS)
def test_bad_argument_is_one_line_and_exit_code_2(case: str, bad_runs) -> None:
    lines = _check_clean_failure(case, bad_runs)
    assert len(lines) == 1, lines
    assert lines[0].startswith("search.py: error:")


@pytest.mark.parametrize(("case", "start"), [("model", "search.py: error: unknown model 'nosuchmodel'"),
                                           ("budget-unreachable", "search.py: error: budget 0.01 is unreachable"),
                                           ("depth-without-blocks",
                                            "search.py: error: model cnn has no removable block")])
def test_late_errors_fail_cleanly_apart_from_log_lines(case: str, start: str, bad_runs) -> None:
    """An error that comes after the context build: exit 2, the error alone, no folder left."""
    lines = _check_clean_failure(case, bad_runs)
    assert lines[-1].startswith(start)


def test_unknown_toml_key_is_one_line_naming_the_key(bad_runs) -> None:
    out, done = bad_runs["toml-unknown-key"]
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2
    assert len(lines) == 1 and "nosuchkey" in lines[0] and "Traceback" not in done.stderr
    assert not out.exists()


def test_config_file_values_are_overridden_by_the_command_line(tmp_path: Path, amc_cache: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('budget = 0.5\nstrategy = "random"\nevaluations = 5\n')
    out = tmp_path / "run"
    done = run_script(SEARCH_SCRIPT, "--config", str(toml), "--evaluations", "3", "--out", str(out), "--quiet",
                      "--threads", "1", "--no-export", "--score", "bn", cache=amc_cache)
    assert done.returncode == 0, done.stderr
    rows = [r for r in history_rows(out / "history.csv") if r["origin"] == "search" and r["rung"] == "0"]
    assert len(rows) == 3  # --evaluations from the command line (the baselines and the deploy rung come on top)
    assert {r["strategy"] for r in rows} == {"random"}
    assert all(float(r["cost_ratio"]) <= 0.5 + 1e-9 for r in rows)
    assert max(float(r["cost_ratio"]) for r in rows) > 0.45  # the random baseline uses the 0.5 budget
    policy = json.loads((out / "policy.json").read_text())
    assert policy["budget"] == 0.5
    assert policy["meta"]["strategy"] == "random" and policy["meta"]["evaluations"] == 3
    config = json.loads((out / "config.json").read_text())
    assert (config["budget"], config["strategy"], config["evaluations"]) == (0.5, "random", 3)
    assert not (out / "pruned.pt2").exists()
    # The summary's per-layer table gives channels for both policies: "keep (channels)" twice per layer.
    import re

    uniform_keeps = set()
    for name, channels in policy["channels"].items():
        line = next(line for line in done.stdout.splitlines() if f" {name} " in line)
        searched, uniform = re.findall(r"(\d\.\d{3}) \((\d+)\)", line)
        assert int(searched[1]) == channels
        assert int(uniform[1]) >= 1
        uniform_keeps.add(uniform[0])
    assert len(uniform_keeps) == 1  # one keep ratio everywhere


# --- --resume without a run to resume (issue 32) -----------------------------------------------------

@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_resume_of_a_folder_without_a_run_is_refused(folder: str, tmp_path: Path, amc_cache: Path) -> None:
    """Before, ``--resume`` on a folder that holds no run started a new full search there (exit 0, no word)."""
    out = tmp_path / "run"
    if folder == "empty":
        out.mkdir()
    done = run_script(SEARCH_SCRIPT, "--resume", "--out", str(out), "--quiet", cache=amc_cache, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("search.py: error: --resume"), lines
    assert repr(str(out)) in lines[0] and "drop --resume" in lines[0]
    assert out.exists() == (folder == "empty") and not (out / "history.csv").exists()
    assert not out.exists() or list(out.iterdir()) == []


def test_resume_without_out_is_refused(tmp_path: Path, amc_cache: Path) -> None:
    """Before, ``--resume`` without ``--out`` started a new search in runs/<timestamp>."""
    done = forkserver.run([sys.executable, str(SEARCH_SCRIPT), "--resume", "--quiet"], cwd=tmp_path,
                          env=subprocess_env(amc_cache), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "search.py: error: --resume needs --out RUN_FOLDER: the folder of the run to continue (or drop --resume)"]
    assert list(tmp_path.iterdir()) == []  # no runs/<timestamp>


# --- Ctrl-C: exit status 130 (issue 32) ---------------------------------------------------------------

def _interrupt_search(args: list[str], cache: Path, until, *, what: str, timeout: float = 120):
    """Runs ``scripts/search.py args``, sends SIGINT (Ctrl-C) once ``until()`` holds; returns the finished process,
    its stdout and its stderr."""
    proc = forkserver.Process([sys.executable, str(SEARCH_SCRIPT), *args], cwd=REPO, env=subprocess_env(cache),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not until():
            assert proc.poll() is None, f"search ended before {what}: {proc.communicate()}"
            assert time.monotonic() < deadline, f"search did not reach {what} in {timeout:.0f} s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    return proc, out, err


def test_an_interrupted_search_writes_its_best_policy_and_exits_130(tmp_path: Path, amc_cache: Path) -> None:
    """Before, it exited 0: a script could not tell a stopped search from a finished one."""
    out = tmp_path / "run"
    args = ["--strategy", "random", "--budget", "0.5", "--evaluations", "5000", "--score", "bn", "--no-export",
            "--out", str(out), "--quiet", "--threads", "1"]
    proc, stdout, stderr = _interrupt_search(  # 2 of the search's own evaluations, after the 2 baselines
        args, amc_cache, lambda: sum(r.origin == "search" for r in read_history(out / "history.csv")) >= 2,
        what="2 evaluations")
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    policy = json.loads((out / "policy.json").read_text())
    assert policy["meta"]["interrupted"] is True
    evaluations = policy["meta"]["evaluations"]
    assert 2 <= evaluations < 5000
    assert "(interrupted:bestsofar)" in "".join(stdout.split())  # rich may wrap the line
    assert stderr.strip().splitlines()[-1] == (f"search.py: interrupted after {evaluations} evaluations; continue "
                                               f"with the same options plus --resume --out {out}")


def test_a_search_interrupted_in_base_training_says_nothing_was_evaluated(tmp_path: Path) -> None:
    """Before, it suggested --resume for a run that had evaluated nothing (and whose folder is removed)."""
    out, cache = tmp_path / "run", tmp_path / "cache"  # an empty cache: the base cnn is trained first
    log = out / "run.log"
    args = ["--epochs", "1000", "--out", str(out), "--quiet", "--threads", "1"]
    proc, _, stderr = _interrupt_search(args, cache, lambda: log.exists() and "training cnn" in log.read_text(),
                                        what="base training")
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == [
        "search.py: interrupted before any policy was evaluated: nothing to resume (run it again to start over)"]
    assert not out.exists()  # a run that evaluated nothing leaves no folder
    assert not cache.exists() or not list(cache.glob("*.pt"))
