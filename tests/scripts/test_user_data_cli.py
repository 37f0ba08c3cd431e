"""A user's own model and data at the command line (issue 20): factories, image folders, ``--device``.

Acceptance 1: a package the test writes (a model factory and a dataset factory: digits in a custom
``Dataset``) searches with ``--workers 2`` and its best policy re-applies. Acceptance 2: an image folder
of PNGs searches, applies and fine-tunes. Acceptance 4: ``--device cuda`` without CUDA is one line and
exit code 2. Bad data arguments are checked in-process (cheap), one of them in a real subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from search.cli import search as search_cli
from tests import forkserver
from tests.search.helpers import APPLY_SCRIPT, REPO, SEARCH_SCRIPT, history_rows, subprocess_env
from tests.user_data import forget_package, write_digit_pngs, write_user_package

torch.set_num_threads(1)
# With the other modules that start Ray instances (its two-worker search does): one worker runs them one
# after another, since Ray instances starting side by side on two cores wait on each other.
pytestmark = [pytest.mark.usefixtures("cache_env"), pytest.mark.xdist_group("ray")]


def run(script: Path, *args: str, cache: Path, pythonpath: Path | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    env = subprocess_env(cache)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), env.get("PYTHONPATH")) if p)
    return forkserver.run([sys.executable, str(script), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def accuracy_rows(stdout: str) -> dict[str, float]:
    """apply_policy.py's table: row label -> its val accuracy."""
    rows = {}
    for line in stdout.splitlines():
        match = re.match(r"\W*(recorded by the search|re-applied now|after \d+ fine-tuning epochs?)\W+([01]\.\d{4})", line)
        if match:
            rows[match.group(1)] = float(match.group(2))
    return rows


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_user_package(tmp_path_factory.mktemp("userpkg"))


def test_factory_model_and_dataset_search_on_two_workers_and_the_policy_reapplies(
        package: Path, amc_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = run(SEARCH_SCRIPT, "--model", "mydata.factories:small_net", "--model-kwargs", '{"width": 8}',
               "--dataset", "mydata.factories:digit_splits", "--dataset-kwargs", '{"labelled": false}',
               "--epochs", "2", "--evaluations", "4", "--workers", "2", "--device", "cpu", "--loader-workers", "1",
               "--out", str(out), "--quiet", "--threads", "1", cache=amc_cache, pythonpath=package)
    assert done.returncode == 0, done.stderr
    rows = history_rows(out / "history.csv")
    assert sum(r["origin"] == "search" and r["rung"] == "0" for r in rows) == 4  # then the baselines, the deploy rung
    assert {r["origin"] for r in rows if r["rung"] == "1"} >= {"baseline:uniform", "baseline:tp-global"}
    policy = json.loads((out / "policy.json").read_text())
    context = policy["meta"]["context"]
    assert context["dataset"] == "mydata.factories:digit_splits" and context["dataset_kwargs"] == [["labelled", False]]
    assert context["model"] == "mydata.factories:small_net" and context["model_kwargs"] == [["width", 8]]
    assert (out / "pruned.pt2").exists()
    applied = run(APPLY_SCRIPT, str(out / "policy.json"), "--out", str(tmp_path / "applied"), "--no-compare",
                  "--quiet", cache=amc_cache, pythonpath=package)
    assert applied.returncode == 0, applied.stderr
    rows = accuracy_rows(applied.stdout)
    # The search's own score of the policy (val_accuracy is its score after the deploy rung's fine-tune).
    assert rows["re-applied now"] == rows["recorded by the search"] == round(policy["metrics"]["search_val_accuracy"], 4)
    assert (tmp_path / "applied" / "pruned.pt2").exists()


def test_imagefolder_of_pngs_searches_applies_and_finetunes(trained_cnn, amc_cache: Path, tmp_path: Path) -> None:
    """The digits as PNGs, searched from the session's cnn checkpoint (trained on the same digits in memory)."""
    folder = write_digit_pngs(tmp_path / "pngs")
    out = tmp_path / "run"
    done = run(SEARCH_SCRIPT, "--dataset", "imagefolder", "--data-dir", str(folder), "--dataset-kwargs", '{"size": 8}',
               "--checkpoint", trained_cnn[1].checkpoint, "--evaluations", "4", "--budget", "0.5",
               "--out", str(out), "--quiet", "--threads", "1", "--no-export", cache=amc_cache)
    assert done.returncode == 0, done.stderr
    policy = json.loads((out / "policy.json").read_text())
    assert policy["meta"]["dataset"] == "imagefolder"
    assert policy["metrics"]["base_val_accuracy"] > 0.85  # the in-memory digits' weights work on the PNGs
    applied = run(APPLY_SCRIPT, str(out / "policy.json"), "--out", str(tmp_path / "applied"), "--finetune-epochs", "1",
                  "--no-compare", "--quiet", cache=amc_cache)
    assert applied.returncode == 0, applied.stderr
    rows = accuracy_rows(applied.stdout)
    assert rows["re-applied now"] == rows["recorded by the search"]
    assert rows["after 1 fine-tuning epoch"] > 0.5
    assert (tmp_path / "applied" / "pruned.pt2").exists()


def _bad_inputs(root: Path, package: Path) -> dict[str, tuple[list[str], str]]:
    """id -> (arguments, what the one line must name)."""
    (root / "flat" / "train").mkdir(parents=True)
    (root / "flat" / "train" / "a.png").write_bytes(b"")
    pngs = write_digit_pngs(root / "broken", limit=40)
    bad_png = pngs / "train" / "digit-3" / "zz-broken.png"
    bad_png.write_text("this is not a PNG")
    (package / "mydata" / "wrong.py").write_text("def splits(seed=0):\n    return {'train': [1, 2]}\n")
    return {
        "factory-not-importable": (["--dataset", "mydata.nosuch:splits"], "'mydata.nosuch'"),
        "factory-returns-wrong-thing": (["--dataset", "mydata.wrong:splits"], "'mydata.wrong:splits' returned a dict"),
        "factory-unknown-kwargs": (["--dataset", "mydata.factories:digit_splits", "--dataset-kwargs", '{"nope": 1}'],
                                   "['nope']"),
        "folder-without-classes": (["--dataset", "imagefolder", "--data-dir", str(root / "flat")],
                                   "has no class subfolders"),
        "unreadable-image": (["--dataset", "imagefolder", "--data-dir", str(pngs)], str(bad_png)),
        "imagefolder-without-dir": (["--dataset", "imagefolder"], "needs --data-dir"),
        "dataset-name": (["--dataset", "nosuch"], "'nosuch'"),
        "dataset-kwargs-not-json": (["--dataset-kwargs", "{size: 8}"], "{size: 8}"),
        "device-spelling": (["--device", "gpu"], "'gpu'"),
        "gpus-without-cuda": (["--gpus-per-worker", "0.5", "--workers", "2"], "--gpus-per-worker 0.5 needs --device cuda"),
    }


def test_bad_user_data_is_one_line_exit_2_and_nothing_written(package: Path, tmp_path: Path, capsys,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    forget_package()  # another module's copy may be imported in this process
    monkeypatch.syspath_prepend(str(package))
    for case, (args, names) in _bad_inputs(tmp_path, package).items():
        out = tmp_path / "runs" / case
        try:
            code = search_cli.main([*args, "--out", str(out), "--quiet", "--evaluations", "2"])
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (case, err)
        assert len(err) == 1 and err[0].startswith("search.py: error:") and names in err[0], (case, err)
        assert not out.exists(), case
    forget_package()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda is valid here")
def test_device_cuda_without_cuda_is_one_line_and_exit_code_2(amc_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = run(SEARCH_SCRIPT, "--device", "cuda", "--out", str(out), "--quiet", cache=amc_cache, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, lines
    assert lines[0].startswith("search.py: error: --device 'cuda':") and "use --device cpu" in lines[0]
    assert not out.exists() and done.stdout == ""


def test_toml_tables_set_dataset_and_model_kwargs(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('dataset = "imagefolder"\ndata_dir = "/data/photos"\ndevice = "cpu"\n'
                    'gpus_per_worker = 0\nloader_workers = 4\n[dataset_kwargs]\nsize = 64\nchannels = 3\n'
                    '[model_kwargs]\nwidth_mult = 0.5\n')
    options = search_cli.resolve_options(["--config", str(toml), "--out", str(tmp_path / "run")])
    config = search_cli.build_config(options)
    assert config.context.dataset_kwargs == (("size", 64), ("channels", 3))
    assert config.context.model_kwargs == (("width_mult", 0.5),)
    assert (config.context.dataset, config.context.data_dir, config.context.loader_workers) == \
        ("imagefolder", "/data/photos", 4)
    assert config.context.device == "cpu" and config.gpus_per_worker == 0
