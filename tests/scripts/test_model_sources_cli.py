"""``scripts/search.py --model hf:PATH`` and ``--model timm:NAME``: a 10-evaluation search on digits end to end,
and one line (exit 2) naming the extra when the package is missing (issue 35).

Models are tiny random-init configs saved into the test's folder: nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.optional import need
from tests.search.helpers import SEARCH_SCRIPT, history_rows, run_script

torch.set_num_threads(1)
BUDGET = 0.5
FAST = ("--budget", str(BUDGET), "--strategy", "random", "--evaluations", "10", "--epochs", "1", "--score", "bn",
        "--select", "none", "--no-baselines", "--no-export", "--threads", "1", "--quiet")


def search(tmp_path: Path, *args: str) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path / "run"
    done = run_script(SEARCH_SCRIPT, *FAST, *args, "--out", str(out), cache=tmp_path / "cache", timeout=300)
    return out, done


def check_search(out: Path, done: subprocess.CompletedProcess, *, layer_prefix: str) -> None:
    assert done.returncode == 0, done.stderr[-2000:]
    rows = history_rows(out / "history.csv")
    searched = [r for r in rows if r["origin"] == "search" and r["rung"] == "0"]  # not the deploy rung's
    assert len(searched) == 10
    assert all(float(r["cost_ratio"]) <= BUDGET + 1e-9 for r in rows)
    policy = json.loads((out / "policy.json").read_text())
    assert policy["channels"] and all(name.startswith(layer_prefix) for name in policy["channels"])


def save_hf(path: Path, kind: str) -> None:
    transformers = need("transformers")
    if kind == "resnet":
        config = transformers.ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                           num_labels=10)
        model = transformers.ResNetForImageClassification(config)
    else:
        config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, image_size=8, patch_size=4, num_channels=1, num_labels=10)
        model = transformers.ViTForImageClassification(config)
    model.save_pretrained(path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_hf_image_classifier_search_through_the_cli(tmp_path: Path, kind: str) -> None:
    save_hf(tmp_path / kind, kind)
    out, done = search(tmp_path, "--model", f"hf:{tmp_path / kind}")
    check_search(out, done, layer_prefix="inner.")


def test_hf_text_model_on_images_is_refused_in_one_line(tmp_path: Path) -> None:
    """A text classifier reads token ids: on an image dataset it is refused, naming ``--dataset text:FILE``
    (tests/scripts/test_text_models_cli.py searches it on text)."""
    transformers = need("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=16, num_labels=10)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    out, done = search(tmp_path, "--model", f"hf:{tmp_path / 'bert'}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"search.py: error: --model hf:{tmp_path / 'bert'} is a text model (bert: its forward takes token ids), and "
        "the datasets here are images: pass your text as --dataset text:FILE (a .jsonl or .csv file with text and "
        "label columns)")


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed here")
def test_missing_timm_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    out, done = search(tmp_path, "--model", "timm:vit_tiny_patch16_224")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "search.py: error: --model timm:vit_tiny_patch16_224 needs timm: pip install -e '.[models]'"]
    assert not (out / "history.csv").exists()


@pytest.mark.slow
@pytest.mark.timm
def test_timm_search_from_a_checkpoint_through_the_cli(tmp_path: Path) -> None:
    """``--checkpoint``: a timm model's own state_dict; nothing is trained."""
    timm = need("timm")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    out, done = search(tmp_path, "--model", "timm:test_resnet", "--checkpoint", str(tmp_path / "weights.pt"))
    check_search(out, done, layer_prefix="")
    assert not list((tmp_path / "cache").glob("timm_test_resnet-*.pt"))  # loaded, not trained


@pytest.mark.slow
@pytest.mark.timm
def test_timm_vit_search_through_the_cli(tmp_path: Path) -> None:
    """img_size comes from the data (8x8); --model-kwargs reach timm.create_model. The deploy rung runs the
    pruned model itself (fewer heads)."""
    need("timm")
    out, done = search(tmp_path, "--model", "timm:test_vit", "--model-kwargs", '{"patch_size": 4}',
                       "--select", "finetune:1", "--select-top-k", "1", "--select-samples", "100")
    check_search(out, done, layer_prefix="")
    assert list((tmp_path / "cache").glob("timm_test_vit-*.pt"))  # trained and cached like a built-in
