"""``scripts/apply_policy.py`` at the command line: a run folder, a new output folder by default, the model
check before any training, Ctrl-C, ``--threads`` (issue 32: a new user's first hour)."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from search.cli.apply import build_parser, main
from search.options import options
from tests import forkserver
from tests.search.helpers import APPLY_SCRIPT, REPO, SEARCH_SCRIPT, run_script, subprocess_env

torch.set_num_threads(1)
pytestmark = [pytest.mark.usefixtures("cache_env"), pytest.mark.xdist_group("search-cli")]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, amc_cache: Path) -> Path:
    """A finished search's folder (policy.json, pruned.pt2, report.html) on the session's digits cnn."""
    out = tmp_path_factory.mktemp("apply-cli") / "run"
    done = run_script(SEARCH_SCRIPT, "--strategy", "random", "--budget", "0.5", "--evaluations", "3", "--score", "bn",
                      "--out", str(out), "--quiet", "--threads", "1", cache=amc_cache)
    assert done.returncode == 0, done.stderr
    return out


def test_a_run_folder_means_its_policy_json(run: Path, amc_cache: Path) -> None:
    """``apply_policy.py runs/<run>``: before, it said the policy file did not exist."""
    policy = json.loads((run / "policy.json").read_text())
    done = run_script(APPLY_SCRIPT, str(run), "--no-export", "--no-compare", "--quiet", cache=amc_cache)
    assert done.returncode == 0, done.stderr
    reapplied = next(line for line in done.stdout.splitlines() if "re-applied now" in line)
    assert f"{policy['metrics']['search_val_accuracy']:.4f}" in reapplied  # the search's own score (bn)


def test_without_out_each_application_gets_a_new_folder(run: Path, amc_cache: Path) -> None:
    """The run's own pruned.pt2 stays the one its report describes (before, it was overwritten)."""
    searched = (run / "pruned.pt2").read_bytes()
    for n, extra in ((1, []), (2, ["--finetune-epochs", "1"])):
        done = run_script(APPLY_SCRIPT, str(run / "policy.json"), "--no-compare", "--quiet", *extra, cache=amc_cache)
        assert done.returncode == 0, done.stderr
        folder = run / f"applied-{n}"
        assert (folder / "pruned.pt2").is_file()
        assert f"wrote{folder / 'pruned.pt2'}" in "".join(done.stdout.split())  # where it wrote (rich may wrap)
        assert (run / "pruned.pt2").read_bytes() == searched
    assert not (run / "applied-3").exists()
    assert "after 1 fine-tuning epoch " in done.stdout  # one epoch, not "1 fine-tuning epochs"


def test_a_folder_without_policy_json_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("apply_policy.py: error:"), err
    assert repr(str(tmp_path / "policy.json")) in err[0]
    assert list(tmp_path.iterdir()) == []  # no applied-1 folder for a policy that was never read


def test_a_policy_of_another_model_is_refused_before_any_training(run: Path, tmp_path: Path) -> None:
    """``--model resnet20`` on a cnn policy: refused from the untrained model's fingerprint, at once; no resnet20
    is trained or cached (before, it trained for minutes, then refused)."""
    cache = tmp_path / "cache"
    before = sorted(p.name for p in run.iterdir())
    start = time.monotonic()
    done = run_script(APPLY_SCRIPT, str(run), "--model", "resnet20", "--quiet", cache=cache, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("apply_policy.py: error:") and "fingerprint" in lines[0], lines
    assert "'resnet20'" in lines[0]
    assert time.monotonic() - start < 30
    assert not cache.exists() or list(cache.iterdir()) == []
    assert sorted(p.name for p in run.iterdir()) == before  # no applied-<n> folder for a refused policy


def _read_until(proc: forkserver.Process, text: str, timeout: float) -> str:
    """Reads the process's stdout until ``text`` appears (or the process ends); returns what it read."""
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout.fileno(), selectors.EVENT_READ)
        while text.encode() not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} on stdout after {timeout:.0f} s: {seen[-500:]!r}"
            if selector.select(min(left, 0.5)):
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                assert chunk, f"the process ended before {text!r}: {seen[-500:]!r}"
                seen += chunk
    return seen.decode(errors="replace")


def test_ctrl_c_is_one_line_and_exit_status_130(run: Path, tmp_path: Path, amc_cache: Path) -> None:
    out = tmp_path / "applied"
    # rich draws its progress bars into the pipe as into a terminal, so the test sees fine-tuning start.
    env = {**subprocess_env(amc_cache), "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}
    argv = [sys.executable, str(APPLY_SCRIPT), str(run / "policy.json"), "--out", str(out), "--finetune-epochs", "1000",
            "--no-compare"]
    proc = forkserver.Process(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _read_until(proc, "fine-tuning", timeout=120)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines() == ["apply_policy.py: interrupted (the files written so far are listed above, "
                                        "if any)"]
    assert not (out / "pruned.pt2").exists()


def test_threads_is_search_py_s_option() -> None:
    threads = options()["threads"]
    assert build_parser().parse_args(["p.json"]).threads == threads.default
    assert build_parser().parse_args(["p.json", "--threads", "3"]).threads == 3
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["p.json", "--threads", "0"])
    assert exc.value.code == 2


def test_the_comparison_flags_an_implausible_latency_ratio(monkeypatch) -> None:
    """Issue 32's example: base 256 ms against 3.7 ms pruned at batch 64 for 0.29 of the FLOPs is flagged."""
    from types import SimpleNamespace

    from rich.console import Console

    from amc.evaluation import compare
    from search.cli.apply import comparison_table

    def stats(name, flops, b1, b64):
        return compare.ModelStats(name=name, params=1000, flops=flops, size_bytes=4000,
                                  latency_ms={1: b1, 64: b64}, test_accuracy=0.9, latency_spread={1: 0.05, 64: 0.05})

    monkeypatch.setattr(compare, "compare_models", lambda models, test, **kw: [
        stats("base", 1_000_000, 1.0, 256.0), stats("pruned", 290_000, 0.6, 3.7)])
    applied = SimpleNamespace(context=SimpleNamespace(model=None, data=SimpleNamespace(test=None)), model=None)
    console = Console(record=True, width=200)
    console.print(comparison_table(applied))
    text = console.export_text()
    assert "3.700 (?)" in text and "256.000 (?)" in text  # batch 64 is doubted
    assert "0.600 (?)" not in text  # batch 1 (ratio 0.6 for 0.29 of the FLOPs) is plausible
    assert "(?) batch 64" in text and "to time reliably" in text
