"""``scripts/search.py`` at the command line: bad input is one clear line and exit code 2 (acceptance 7)."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.search.helpers import SEARCH_SCRIPT, history_rows, run_script

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
                                           ("budget-unreachable", "search.py: error: budget 0.01 is unreachable")])
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
    rows = history_rows(out / "history.csv")
    assert len(rows) == 3
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
