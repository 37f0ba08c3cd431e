"""``scripts/search.py --model timm:NAME`` for a ViT, a Swin and an EfficientFormer (issue 35, acceptance 1): a
10-evaluation search end to end, with the default baselines, deploy rung and export (EfficientFormer without the
first two, for time).

The ViT and the Swin run on digits (8x8, their image size from the data); EfficientFormer (v1) attends over the
7x7 grid of its last stage, so it needs 224x224 images: digits as PNGs in an image folder, scaled to 224. Models are
tiny random-init configs (--model-kwargs): nothing is downloaded. Marked ``timm`` and ``slow``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.optional import need
from tests.search.helpers import SEARCH_SCRIPT, history_rows, run_script
from tests.user_data import write_digit_pngs

need("timm")
pytestmark = [pytest.mark.timm, pytest.mark.slow]
torch.set_num_threads(1)

RUN = ("--strategy", "random", "--evaluations", "10", "--epochs", "1", "--threads", "1", "--quiet")
# name -> (timm name, --model-kwargs, --budget): EfficientFormer's 8-channel layers, each kept at min_keep=0.2 (2 of
# 8), keep 0.56 of its FLOPs.
MODELS = {
    "vit": ("vit_tiny_patch16_224", {"patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 4}, 0.5),
    "swin": ("swin_tiny_patch4_window7_224",
             {"patch_size": 2, "window_size": 2, "embed_dim": 16, "depths": [1, 1], "num_heads": [2, 4]}, 0.5),
    "efficientformer": ("efficientformer_l1", {"depths": [1, 1, 1, 2], "embed_dims": [8, 8, 16, 16]}, 0.7),
}


def search(tmp_path: Path, name: str, *args: str) -> tuple[Path, subprocess.CompletedProcess]:
    ref, kwargs, budget = MODELS[name]
    out = tmp_path / "run"
    done = run_script(SEARCH_SCRIPT, *RUN, "--budget", str(budget), "--model", f"timm:{ref}",
                      "--model-kwargs", json.dumps(kwargs), *args, "--out", str(out), cache=tmp_path / "cache",
                      timeout=300)
    return out, done


@pytest.mark.parametrize("name", sorted(MODELS))
def test_timm_search_through_the_cli(tmp_path: Path, name: str) -> None:
    args: tuple[str, ...] = ()
    if name == "efficientformer":
        pngs = write_digit_pngs(tmp_path / "pngs", limit=120)  # 224x224: few images
        args = ("--dataset", "imagefolder", "--data-dir", str(pngs), "--dataset-kwargs", '{"size": 224}',
                "--no-baselines", "--select", "none")  # at 224x224 the baselines and deploy rung triple its time
    out, done = search(tmp_path, name, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = history_rows(out / "history.csv")
    assert sum(r["origin"] == "search" and r["rung"] == "0" for r in rows) == 10  # then the baselines, the deploy rung
    if name != "efficientformer":  # the deploy rung fine-tuned the best candidates and the baselines
        assert {r["origin"] for r in rows if r["rung"] == "1"} >= {"search", "baseline:uniform", "baseline:tp-global"}
    assert all(float(r["cost_ratio"]) <= MODELS[name][2] + 1e-9 for r in rows)
    policy = json.loads((out / "policy.json").read_text())
    assert policy["channels"] and policy["meta"]["context"]["model"] == f"timm:{MODELS[name][0]}"
    assert (out / "pruned.pt2").exists()  # the chosen policy's pruned model, exported
    assert list((tmp_path / "cache").glob(f"timm_{MODELS[name][0]}-*.pt"))  # the base model, trained and cached
