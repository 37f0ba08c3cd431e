"""The search loop: determinism, resume after a kill, Ctrl-C, and re-applying the policy it writes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from amc.apply import apply_policy
from amc.context import ContextConfig, build_context
from amc.errors import ConfigError, PolicyError
from amc.evaluation.evaluator import EvalResult
from amc.models import build_model
from amc.pruning.policy import Policy
from search.config import SearchConfig
from search.history import read_history
from search.runner import run_search
from tests.search.helpers import (
    APPLY_SCRIPT,
    SEARCH_SCRIPT,
    history_rows,
    kill_search_when,
    run_script,
)

torch.set_num_threads(1)
# Its module fixtures are costly: one xdist worker runs the whole module (make test uses --dist loadgroup).
pytestmark = [pytest.mark.usefixtures("cache_env"), pytest.mark.xdist_group("runner")]

BUDGET = 0.3
TIMING_COLUMNS = ("seconds", "wall_time")


def _config(out: Path, context_config: ContextConfig, **kwargs) -> SearchConfig:
    # baselines=False: these tests count and compare the strategies' own rows (test_baselines.py covers the baselines)
    values = dict(budget=BUDGET, evaluations=12, warmup=4, out=str(out), progress=False, context=context_config,
                  baselines=False)
    values.update(kwargs)
    return SearchConfig(**values)


# --- determinism (acceptance 6) -------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["ddpg", "optuna"])
def test_same_seed_same_history(strategy: str, tmp_path: Path, context_config: ContextConfig) -> None:
    runs = []
    for name in ("a", "b"):
        # No shared context: each run builds its own evaluator, as a fresh process would.
        run_search(_config(tmp_path / name, context_config, strategy=strategy, sampler="tpe", export=False))
        rows = history_rows(tmp_path / name / "history.csv")
        runs.append([{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows])
    assert len(runs[0]) == 12
    assert runs[0] == runs[1]
    assert len({row["keep"] for row in runs[0]}) > 1
    policies = [Policy.load(tmp_path / name / "policy.json") for name in ("a", "b")]
    assert policies[0].keep == policies[1].keep
    assert policies[0].metrics["val_accuracy"] == policies[1].metrics["val_accuracy"]


# --- resume after a kill (acceptance 4) -----------------------------------------------------------

def _completed_trials(out: Path) -> set[int]:
    study = optuna.load_study(study_name=f"amc-search/{out.name}", storage=f"sqlite:///{out / 'study.db'}")
    # A trial re-added on resume (the kill fell between writing the row and telling the study) gets a new
    # number; it names the step it stands for in its user attributes.
    return {int(t.user_attrs.get("step", t.number))
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}


def test_killed_optuna_search_resumes(tmp_path: Path, amc_cache: Path) -> None:
    out = tmp_path / "run"
    args = ["--budget", "0.3", "--strategy", "optuna", "--evaluations", "40", "--out", str(out), "--quiet",
            "--threads", "1", "--no-export",  # (the export is tested on its own)
            "--score", "bn",  # resume is what is tested here; bn is 2.5x cheaper than the CLI's default reconstruct
            "--no-baselines", "--select", "none"]  # the search's own rows (test_baselines.py: the rest)
    kill_search_when(args, out, amc_cache, lambda rows: len(rows) >= 8, what="8 evaluations")
    lines_before = (out / "history.csv").read_text().splitlines()
    before = len(lines_before) - 1
    assert 8 <= before < 40
    assert not (out / "policy.json").exists()

    done = run_script(SEARCH_SCRIPT, *args, "--resume", cache=amc_cache)
    assert done.returncode == 0, done.stderr

    lines_after = (out / "history.csv").read_text().splitlines()
    assert lines_after[:len(lines_before)] == lines_before  # every row written before the kill, unchanged
    records = read_history(out / "history.csv")
    assert len(records) == 40
    assert sorted(r.index for r in records) == list(range(40))
    assert all(r.cost_ratio <= BUDGET + 1e-9 for r in records)
    # A kill between writing a row and telling the study is repaired on resume: every recorded
    # evaluation is a completed trial again (the study also holds repeats told their known result).
    assert {r.step for r in records} <= _completed_trials(out)
    policy = Policy.load(out / "policy.json")
    assert policy.meta["evaluations"] == 40
    assert policy.metrics["val_accuracy"] == max(r.accuracy for r in records)

    # Without --resume the run folder is refused; --resume with another budget names the setting. Nothing changes.
    with ThreadPoolExecutor(max_workers=2) as pool:
        again, other = pool.map(lambda argv: run_script(SEARCH_SCRIPT, *argv, cache=amc_cache),
                                [args, [a if a != "0.3" else "0.5" for a in args] + ["--resume"]])
    assert again.returncode == 2
    assert "--resume" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert other.returncode == 2
    assert "budget" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    assert (out / "history.csv").read_text().splitlines() == lines_after


# --- Ctrl-C (acceptance 4) ------------------------------------------------------------------------

class InterruptingEvaluator:
    """Wraps an evaluator; the ``interrupt_at``-th call of ``evaluate_many`` raises KeyboardInterrupt."""

    def __init__(self, inner, interrupt_at: int) -> None:
        self.inner = inner
        self.interrupt_at = interrupt_at
        self.calls = 0

    def evaluate(self, policy: Policy) -> EvalResult:
        return self.evaluate_many([policy])[0]

    def evaluate_many(self, policies: Sequence[Policy]) -> list[EvalResult]:
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return self.inner.evaluate_many(policies)


@pytest.mark.parametrize("strategy", ["random", "optuna", "ddpg"])
def test_ctrl_c_writes_the_best_policy_so_far(strategy: str, tmp_path: Path, context_config: ContextConfig) -> None:
    ctx = build_context(context_config, progress=False)
    evaluator = InterruptingEvaluator(ctx.evaluator, interrupt_at=6)
    config = _config(tmp_path / "run", context_config, strategy=strategy, export=False)
    try:
        result = run_search(config, context=ctx, evaluator=evaluator)
    except KeyboardInterrupt:  # escaping would stop the whole pytest session
        pytest.fail("run_search let the KeyboardInterrupt escape")
    assert result.interrupted
    assert result.evaluations == 5
    rows = history_rows(tmp_path / "run" / "history.csv")
    assert len(rows) == 5
    policy = Policy.load(tmp_path / "run" / "policy.json")
    assert policy.metrics["val_accuracy"] == max(float(r["accuracy"]) for r in rows)
    assert policy.meta["interrupted"] is True
    assert policy.meta["evaluations"] == 5
    assert (tmp_path / "run" / "report.png").exists()
    html = (tmp_path / "run" / "report.html").read_text()
    assert html.count("<td>not timed</td>") == 6  # a stopped search times neither base nor pruned (nor their ratio row)
    if strategy == "optuna":
        with sqlite3.connect(tmp_path / "run" / "study.db") as db:
            states = dict(db.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
        assert states == {"COMPLETE": 5, "FAIL": 1}


class InterruptAtOnce:
    """An evaluator whose first call raises KeyboardInterrupt (Ctrl-C before any result)."""

    def evaluate(self, policy: Policy) -> EvalResult:
        raise KeyboardInterrupt

    def evaluate_many(self, policies: Sequence[Policy]) -> list[EvalResult]:
        raise KeyboardInterrupt


def test_ctrl_c_before_any_evaluation_leaves_the_folder_reusable(tmp_path: Path,
                                                                 context_config: ContextConfig) -> None:
    ctx = build_context(context_config, progress=False)
    config = _config(tmp_path / "run", context_config, strategy="random", export=False)
    with pytest.raises(KeyboardInterrupt):
        run_search(config, context=ctx, evaluator=InterruptAtOnce())
    assert not (tmp_path / "run" / "history.csv").exists()


# --- the policy it writes: re-apply, fingerprint (acceptance 2, 3) --------------------------------

@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory, amc_cache: Path) -> Path:
    """A finished random search (its policy.json) on the digits cnn."""
    out = tmp_path_factory.mktemp("searched") / "run"
    run_search(_config(out, ContextConfig(cache_dir=str(amc_cache)), strategy="random", evaluations=10))
    return out / "policy.json"


@pytest.fixture(scope="module")
def resnet20_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained) resnet20 state_dict for digits: enough to build the model without training it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("resnet20") / "resnet20.pt"
    torch.save(build_model("resnet20", in_channels=1, num_classes=10).state_dict(), path)
    return path


def test_policy_of_another_model_is_refused(searched: Path, resnet20_checkpoint: Path) -> None:
    with pytest.raises(PolicyError, match="fingerprint"):
        apply_policy(searched, model="resnet20", checkpoint=str(resnet20_checkpoint), export=False, progress=False)


def test_apply_policy_script_refuses_another_model(searched: Path, resnet20_checkpoint: Path, tmp_path: Path,
                                                   amc_cache: Path) -> None:
    done = run_script(APPLY_SCRIPT, str(searched), "--model", "resnet20", "--checkpoint", str(resnet20_checkpoint),
                      "--out", str(tmp_path / "x"), "--quiet", cache=amc_cache)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("apply_policy.py: error:") and "fingerprint" in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x" / "pruned.pt2").exists()


def test_apply_policy_reproduces_the_search(searched: Path, tmp_path: Path) -> None:
    policy = Policy.load(searched)
    applied = apply_policy(searched, out=tmp_path, progress=False)
    assert applied.val_accuracy == policy.metrics["val_accuracy"]
    assert applied.test_accuracy == policy.metrics["test_accuracy"]
    assert applied.cost_ratio == pytest.approx(policy.metrics["cost_ratio"], abs=1e-12)


def test_apply_policy_script_exports_a_model_within_budget(searched: Path, tmp_path: Path, amc_cache: Path) -> None:
    policy = Policy.load(searched)
    out = tmp_path / "x"
    done = run_script(APPLY_SCRIPT, str(searched), "--out", str(out), "--quiet", cache=amc_cache)
    assert done.returncode == 0, done.stderr
    recorded = next(line for line in done.stdout.splitlines() if "recorded by the search" in line)
    reapplied = next(line for line in done.stdout.splitlines() if "re-applied now" in line)
    assert recorded.split()[-3:] == reapplied.split()[-3:]  # val acc, test acc, cost ratio (4 decimals)
    assert f"{policy.metrics['val_accuracy']:.4f}" in reapplied

    model = torch.export.load(out / "pruned.pt2").module()
    x = torch.randn(5, 1, 8, 8)
    assert model(x).shape == (5, 10)
    with FlopCounterMode(display=False) as counter:
        model(x[:1])
    flops = counter.get_total_flops()
    assert flops == policy.metrics["cost"]
    assert flops <= BUDGET * policy.metrics["base_cost"]
    assert json.loads(searched.read_text())["budget"] == BUDGET


# --- search seed: repeat a search on the same base model ------------------------------------------

def test_search_seed_repeats_a_search_on_the_same_base_model(tmp_path: Path, context_config: ContextConfig) -> None:
    results = [run_search(_config(tmp_path / f"s{seed}", context_config, strategy="random", evaluations=4,
                                  seed=seed, export=False)) for seed in (1, 2)]
    assert results[0].base_val_accuracy == results[1].base_val_accuracy  # one base model, one data split
    keeps = [[r.keep for r in read_history(tmp_path / f"s{seed}" / "history.csv")] for seed in (1, 2)]
    assert keeps[0] != keeps[1]
    assert Policy.load(tmp_path / "s1" / "policy.json").meta["seed"] == 1
    with pytest.raises(ConfigError, match="search seed"):
        _config(tmp_path / "bad", context_config, seed=-1)


def test_runs_checking_one_folder_at_once_never_see_it_as_unwritable(tmp_path: Path) -> None:
    """Two searches started into the same folder (as the resume test does) each probe it for writing: with
    one shared probe name, one run deleted the other's probe and reported the folder as not writable."""
    from search.runner import prepare_out

    config = SearchConfig(out=str(tmp_path / "run"), progress=False)

    def check(_: int) -> str:
        try:
            prepare_out(config)
            return "ok"
        except ConfigError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(check, range(400)))
    assert outcomes == ["ok"] * 400
    assert not list((tmp_path / "run").iterdir())  # no probe left behind
