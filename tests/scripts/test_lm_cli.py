"""``scripts/search.py --model tiny-lm --dataset code``: a language model's sparsity search through the product's
own command line, loop, resume and Ray workers (issue 36).

Tiny settings through the ordinary options: ``--model-kwargs`` (2 blocks of width 32), ``--dataset-kwargs``
(a 120 kB slice of the standard library, a 300-id tokenizer, 10 training steps, few evaluation windows).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from amc.pruning.policy import Policy
from search.history import read_history
from search.lm_baselines import OWL, UNIFORM
from tests import forkserver
from tests.search.helpers import REPO, SEARCH_SCRIPT, run_script, subprocess_env

MODEL_KWARGS = json.dumps({"dim": 32, "depth": 2, "heads": 2})
DATASET_KWARGS = json.dumps({"seq_len": 32, "vocab_size": 300, "calibration": 0.2, "heldout": 0.2,
                             "max_bytes": 120_000, "calibration_windows": 8, "heldout_windows": 16,
                             "train": {"steps": 10, "batch_size": 8, "warmup": 2, "checkpoint_every": 0,
                                       "eval_windows": 4}})
EVALUATIONS = 6
RAY_EVALUATIONS = 20


def lm_args(out: Path, *extra: str) -> list[str]:
    return ["--model", "tiny-lm", "--dataset", "code", "--budget", "0.5", "--criterion", "wanda", "--score", "ppl",
            "--strategy", "optuna", "--evaluations", str(EVALUATIONS), "--model-kwargs", MODEL_KWARGS,
            "--dataset-kwargs", DATASET_KWARGS, "--quiet", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lm-cli-cache")


def check_run(out: Path, done, *, evaluations: int = EVALUATIONS) -> list:
    assert done.returncode == 0, done.stderr[-2000:]
    assert "held-out perplexity" in done.stdout and "Traceback" not in done.stderr
    rows = read_history(out / "history.csv")
    # the baselines come first; on two workers in the order they finish
    assert sorted(r.origin for r in rows[:2]) == sorted([UNIFORM, OWL]) and len(rows) == 2 + evaluations
    assert all(r.cost_ratio == pytest.approx(0.5, abs=1e-9) for r in rows)
    policy = Policy.load(out / "policy.json")
    assert (policy.criterion, policy.granularity, policy.resource) == ("wanda", "weight", "params")
    best = max(rows, key=lambda r: r.accuracy)
    assert policy.metrics["heldout_perplexity"] <= policy.metrics["uniform_heldout_perplexity"]
    assert list(policy.keep.values()) == pytest.approx(list(best.keep))
    saved = json.loads((out / "config.json").read_text())["context"]
    assert (saved["model"], saved["per"], saved["data"]["max_bytes"]) == ("tiny-lm", "block", 120_000)
    return rows


def test_lm_search_through_the_cli_then_resume_adds_nothing(tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "run"
    rows = check_run(out, run_script(SEARCH_SCRIPT, *lm_args(out), cache=cache))
    again = run_script(SEARCH_SCRIPT, *lm_args(out, "--resume"), cache=cache)
    assert check_run(out, again) == rows


@pytest.mark.parametrize(("extra", "says"), [
    (["--resource", "flops"], "use --resource params"),
    (["--criterion", "l1"], "choose one of magnitude, wanda, sparsegpt"),
    (["--score", "reconstruct"], "choose one of ppl, kl"),
    (["--select", "finetune:1"], "--select none"),
])
def test_image_only_options_are_refused_in_one_line(tmp_path: Path, cache: Path, extra, says) -> None:
    done = run_script(SEARCH_SCRIPT, *lm_args(tmp_path / "bad", *extra), cache=cache, timeout=120)
    assert done.returncode == 2 and says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_lm_search_on_two_ray_workers_interrupted_and_resumed(tmp_path: Path, cache: Path) -> None:
    """20 evaluations on two Ray workers, interrupted (Ctrl-C) part way, then resumed on two workers to exactly
    20: the rows before the interrupt are kept as they were and none is evaluated again."""
    out = tmp_path / "ray"
    args = [*lm_args(out, "--workers", "2"), "--evaluations", str(RAY_EVALUATIONS)]
    proc = forkserver.Process([sys.executable, str(SEARCH_SCRIPT), *args], cwd=REPO, env=subprocess_env(cache),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while len(read_history(out / "history.csv")) < 2 + 6:  # the baselines and 6 of the search's own
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "the search did not reach 8 rows in 180 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, proc.stderr.read()[-2000:]  # stopped, its Ray workers with it
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    before = read_history(out / "history.csv")
    assert 8 <= len(before) < 2 + RAY_EVALUATIONS
    done = run_script(SEARCH_SCRIPT, *args, "--resume", cache=cache)
    rows = check_run(out, done, evaluations=RAY_EVALUATIONS)
    assert rows[:len(before)] == before
    assert len({r.keep for r in rows[2:]}) == RAY_EVALUATIONS  # no policy of the search evaluated twice
    assert "Ray pool ready: 2 workers" in (out / "run.log").read_text()  # the evaluations ran on the workers
