"""``scripts/bench.py deployed``: a policy's exported program timed against the base exported the same way."""

from __future__ import annotations

import re

import pytest

from amc.context import ContextConfig, build_context
from amc.pruning.export import export_pt2
from amc.pruning.policy import Policy
from search.bench.deployed import MODELS, deployed_latency
from tests.search.helpers import REPO, refusal, run_script

pytestmark = pytest.mark.usefixtures("cache_env")
BENCH = REPO / "scripts" / "bench.py"
KEEP = [0.3, 0.3, 0.4, 0.4, 0.5, 0.5]  # the 6 decisions of the default cnn
FAST_TABLE = dict(passes=1, grid=3, min_run_time=0.001, model_run_time=0.005, calibration_keeps=[0.5],
                  calibration_random=1, calibration_rounds=3)


@pytest.fixture(scope="module")
def run_dir(amc_cache, tmp_path_factory):
    """A run folder as a latency search leaves it: policy.json and the exported pruned.pt2."""
    ctx = build_context(ContextConfig(cache_dir=str(amc_cache)), progress=False)
    folder = tmp_path_factory.mktemp("run")
    # A coarse, short latency table: applying a latency policy reads (or builds) the table it was searched with.
    meta = {"context": {"model": "cnn", "dataset": "digits", "seed": 0, "cache_dir": str(amc_cache),
                        "resource": "latency", "latency": FAST_TABLE}}
    Policy.from_ratios(ctx.graph, KEEP, resource="latency", budget=0.5, meta=meta).save(folder / "policy.json")
    export_pt2(ctx.evaluator.prune(KEEP), ctx.data.val.tensors[0][:2], folder / "pruned.pt2")
    return folder


def test_the_policy_s_own_program_is_timed_with_three_others(run_dir):
    done = deployed_latency(run_dir / "policy.json", batch_size=4, repeats=2, sample_time=0.01)
    assert done.program == str(run_dir / "pruned.pt2") and done.batch_size == 4
    assert set(done.ms) == set(MODELS) and all(v > 0 for v in done.ms.values())
    assert done.exported_ratio == done.ms["pruned_exported"] / done.ms["base_exported"]
    assert done.eager_ratio == done.ms["pruned"] / done.ms["base"]
    again = deployed_latency(run_dir / "policy.json", repeats=2, sample_time=0.01, export_again=True)
    assert again.program == "fresh export (--export-again)" and set(again.ms) == set(MODELS)


def test_an_unfolded_program_is_not_timed_against_a_folded_base(run_dir, tmp_path, caplog):
    """A pruned.pt2 written before the export folded batch norms would carry one operator per conv more
    than the base program it is compared with; a folded export is timed instead, and the reason named."""
    import shutil

    folder = tmp_path / "old-run"
    folder.mkdir()
    shutil.copy(run_dir / "policy.json", folder / "policy.json")
    from amc.apply import apply_policy

    applied = apply_policy(folder / "policy.json", export=False, progress=False)
    export_pt2(applied.model, applied.context.data.val.tensors[0][:2], folder / "pruned.pt2", fold=False)
    with caplog.at_level("WARNING", logger="search.bench.deployed"):
        done = deployed_latency(folder / "policy.json", repeats=2, sample_time=0.01)
    assert done.program == f"fresh export ({folder / 'pruned.pt2'} has unfolded batch norms)"
    assert "keeps its batch norms" in caplog.text
    missing = tmp_path / "no-program"
    missing.mkdir()
    shutil.copy(run_dir / "policy.json", missing / "policy.json")
    assert deployed_latency(missing / "policy.json", repeats=1, sample_time=0.01).program.endswith("does not exist)")


@pytest.mark.slow
def test_cli_times_in_fresh_processes_and_compares_with_the_budget(run_dir, amc_cache):
    done = run_script(BENCH, "deployed", str(run_dir / "policy.json"), "--processes", "2", "--repeats", "2",
                      "--sample-time", "0.01", cache=amc_cache)
    assert done.returncode == 0, done.stderr[-2000:]
    out = " ".join(done.stdout.split())  # rich wraps long lines
    assert re.search(r"exported ratio \d\.\d{4}-\d\.\d{4} over 2 process\(es\); [0-2] above the budget 0\.5", out)
    assert re.search(r"eager ratio \d\.\d{4}-\d\.\d{4} over 2 process\(es\)", out)
    assert "pruned.pt2" in out


@pytest.mark.parametrize(("args", "expected"), [
    (["no/such/policy.json"], "argument policy: no file 'no/such/policy.json': pass the policy.json a search wrote"),
    (["{policy}", "--processes", "0"], "argument --processes: must be an integer >= 1, got '0'"),
])
def test_cli_refuses_a_missing_policy_and_bad_options(args, expected, run_dir, capsys):
    code, lines = refusal(["deployed", *(a.format(policy=run_dir / "policy.json") for a in args)], capsys)
    assert code == 2
    assert len(lines) == 1 and expected in lines[0], lines


def test_a_failing_timing_process_is_named(tmp_path):
    from search.bench.deployed import in_fresh_processes

    expected = r"the timing process failed \(exit 1\): .*PolicyError: .*missing\.json' does not exist"
    with pytest.raises(RuntimeError, match=expected):
        in_fresh_processes(tmp_path / "missing.json", 1, repeats=1)


def test_cli_refuses_a_file_that_is_not_a_policy(tmp_path, capsys):
    bad = tmp_path / "policy.json"
    bad.write_text("not json")
    code, lines = refusal(["deployed", str(bad)], capsys)
    assert code == 2
    assert len(lines) == 1 and f"{bad} is not a policy file" in lines[0] and "pass the policy.json" in lines[0]
