"""``scripts/search.py --model hf:DIR --dataset text:FILE``: a Hugging Face text classifier searched end to end on
the user's own text, tokenized with the tokenizer saved in DIR (issue 35).

The corpus, tokenizer and tiny random-init BERT / Llama classifiers are made in the test's folder
(tests/text_data.py): nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.optional import need
from tests.scripts.test_model_sources_cli import check_search, search


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_text_classifier_search_through_the_cli(tmp_path: Path, kind: str) -> None:
    need("transformers")
    need("tokenizers")
    from tests.text_data import text_setup

    folder, data = text_setup(tmp_path, kind)
    out, done = search(tmp_path, "--model", f"hf:{folder}", "--dataset", f"text:{data}",
                       "--dataset-kwargs", '{"length": 32}')
    check_search(out, done, layer_prefix="inner.")
    settings = json.loads((out / "config.json").read_text())
    assert json.dumps(settings).count(str(folder)) >= 2  # the model, and its folder as the tokenizer
    heads = [layer["base"] for layer in json.loads((out / "layers.json").read_text())["layers"]
             if layer["name"].endswith(("attention", "self_attn"))]
    assert heads == ([4, 4] if kind == "bert" else [2, 2])  # attention heads (Llama: key/value groups) searched


def test_text_data_without_a_tokenizer_is_one_line(tmp_path: Path) -> None:
    need("transformers")
    need("tokenizers")
    from tests.text_data import corpus, save_text_model, write_jsonl

    folder = save_text_model(tmp_path / "bert", "bert", vocab_size=50)
    data = write_jsonl(tmp_path / "d.jsonl", corpus())
    out, done = search(tmp_path, "--model", f"hf:{folder}", "--dataset", f"text:{data}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"search.py: error: --dataset text:{data}: {str(folder)!r} has no tokenizer (no tokenizer.json or "
        "tokenizer_config.json); save it there with tokenizer.save_pretrained(DIR)")
    assert not (out / "history.csv").exists()


def test_a_text_dataset_without_a_file_is_refused_by_the_options(tmp_path: Path) -> None:
    _, done = search(tmp_path, "--dataset", "text:")
    assert done.returncode == 2
    assert "--dataset: must name a file after text:" in done.stderr.strip().splitlines()[-1]
