"""``scripts/search.py --model hf:PATH --dataset code``: a local Hugging Face causal LM (a folder that
``save_pretrained`` wrote, its tokenizer beside it) to an exported sparse model in one command (issue 36, the
README's "Language models" command).

A random-init Llama with grouped-query attention (2 layers of width 32) and a byte-level BPE trained here
(:func:`tests.search.test_lm_export.save_causal_lm`); nothing is downloaded. Skipped without transformers.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from amc.pruning.policy import Policy
from search.history import read_history
from search.lm import ONNX_FILE, PRETRAINED_DIR
from search.lm_baselines import OWL, UNIFORM
from tests.optional import need
from tests.search.helpers import SEARCH_SCRIPT, run_script
from tests.search.test_lm_export import save_causal_lm

DATASET_KWARGS = json.dumps({"seq_len": 32, "calibration": 0.2, "heldout": 0.2, "max_bytes": 120_000,
                             "calibration_windows": 8, "heldout_windows": 16})
EVALUATIONS = 4


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lm-hf-cli-cache")


def test_a_local_causal_lm_folder_to_an_exported_sparse_model(tmp_path: Path, cache: Path) -> None:
    need("transformers")
    import torch
    from transformers import AutoModelForCausalLM

    from amc.models.lm import build_lm
    from amc.sparsity import discover_sparse, zeros_per_layer

    folder = save_causal_lm(tmp_path / "llama", "llama")
    out = tmp_path / "run"
    done = run_script(SEARCH_SCRIPT, "--model", f"hf:{folder}", "--dataset", "code", "--budget", "0.5",
                      "--per", "layer", "--strategy", "random", "--evaluations", str(EVALUATIONS),
                      "--dataset-kwargs", DATASET_KWARGS, "--quiet", "--out", str(out), cache=cache)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and PRETRAINED_DIR in done.stdout
    rows = read_history(out / "history.csv")
    assert [r.origin for r in rows[:2]] == [UNIFORM, OWL] and len(rows) == 2 + EVALUATIONS
    policy = Policy.load(out / "policy.json")
    assert policy.meta["model"] == f"hf:{folder}" and policy.meta["per"] == "layer"
    assert len(policy.keep) == 2 * 7  # per layer: q, k, v, o, gate, up, down of each of 2 Llama layers
    # the exported folder: transformers loads it; each projection holds the policy's fraction of zeros
    exported = out / PRETRAINED_DIR
    plain = AutoModelForCausalLM.from_pretrained(exported, local_files_only=True)
    assert type(plain).__name__ == "LlamaForCausalLM" and plain.config.num_key_value_heads == 2
    back = build_lm(f"hf:{exported}")
    layout = discover_sparse(back, per="layer")
    zeros = zeros_per_layer(back, layout)
    numel = {x.name: x.numel for x in layout.layers}
    assert list(zeros) == list(policy.keep)  # the same layers, by the same qualified names
    for name, keep in policy.keep.items():
        assert zeros[name] == pytest.approx((1 - keep) * numel[name], abs=1)
    assert sum(zeros.values()) == round(0.5 * layout.total)
    assert (out / ONNX_FILE).is_file() == (importlib.util.find_spec("onnx") is not None)
    with torch.no_grad():  # the folder's weights are the ones build_lm reads back
        ids = torch.randint(0, plain.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(plain.eval()(input_ids=ids).logits, back(ids), atol=1e-5, rtol=0)


def test_a_folder_without_its_tokenizer_is_one_line(tmp_path: Path, cache: Path) -> None:
    need("transformers")
    folder = save_causal_lm(tmp_path / "gpt2", "gpt2")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    done = run_script(SEARCH_SCRIPT, "--model", f"hf:{folder}", "--dataset", "code", "--budget", "0.5",
                      "--evaluations", "2", "--dataset-kwargs", DATASET_KWARGS, "--quiet", "--out",
                      str(tmp_path / "bad"), cache=cache, timeout=120)
    errors = [line for line in done.stderr.splitlines() if line.startswith("search.py: error:")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "tokenizer" in errors[0] and str(folder) in errors[0]
    assert not (tmp_path / "bad").exists()
