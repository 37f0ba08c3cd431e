"""``--dataset text:FILE`` (:mod:`amc.data.text`): splits, labels, token ids, padding masks and one-line errors.

The corpus is real text found on every machine: the first docstring lines of three standard-library modules
(tests/text_data.py), tokenized with a word-level tokenizer trained on it and saved into the model's folder.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from amc.data.datasets import load_dataset
from amc.data.splits import default_val_size
from amc.errors import ConfigError, DataError, ModelError
from tests.optional import need

need("transformers")
need("tokenizers")

from tests import text_data as td


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> tuple[Path, Path]:
    return td.text_setup(tmp_path_factory.mktemp("text"), "bert")


def load(path: Path, folder: Path, **kwargs) -> object:
    settings = {"tokenizer": str(folder), **kwargs.pop("settings", {})}
    return load_dataset(f"text:{path}", kwargs=settings, **kwargs)


def labels(ds) -> np.ndarray:
    return ds.tensors[1].numpy()


def test_splits_are_stratified_seeded_and_hold_padded_token_ids(bert) -> None:
    folder, path = bert
    rows = td.corpus()
    data = load(path, folder)
    n = len(rows)
    n_test = round(0.2 * n)
    assert (len(data.test), len(data.val), len(data.train)) == (
        n_test, default_val_size(n - n_test), n - n_test - default_val_size(n - n_test))
    assert data.num_classes == 3 and data.input_shape == (64,) and data.in_memory
    assert json.loads(data.spec)["classes"] == sorted(td.MODULES)  # names in sorted order
    counts = Counter(r["label"] for r in rows)
    for split in (data.train, data.val, data.test):
        x = split.tensors[0]
        assert x.dtype == torch.float32 and x.shape[1] == 64
        assert set(labels(split)) == {0, 1, 2}  # every class in every split (stratified)
        assert (x[:, 0] == 2).all()  # [CLS] first; texts are shorter than 64: [PAD] (0) fills the rest
        assert ((x == 0).sum(1) > 0).all() and (x[:, -1] == 0).all()
    share = np.bincount(labels(data.test), minlength=3) / len(data.test)
    want = np.array([counts[m] for m in sorted(td.MODULES)]) / n
    assert np.abs(share - want).max() < 0.05
    again, other = load(path, folder), load(path, folder, seed=1)
    assert again.fingerprint() == data.fingerprint() != other.fingerprint()


def test_ids_are_the_tokenizers_truncated_to_length(bert) -> None:
    from transformers import AutoTokenizer

    folder, path = bert
    data = load(path, folder, settings={"length": 4}, train_limit=30, test_limit=12)
    assert data.input_shape == (4,) and (len(data.train), len(data.test)) == (30, 12)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    texts = {tuple(tokenizer(r["text"], truncation=True, max_length=4)["input_ids"]) for r in td.corpus()}
    x = data.train.tensors[0]
    assert all(tuple(int(i) for i in row) in texts for row in x)
    assert (x[:, 0] == 2).all() and (x[:, 3] == 3).sum() > 20  # [CLS] t1 t2 [SEP]: truncation keeps the specials


def test_csv_with_int_labels_keeps_the_indices(bert, tmp_path: Path) -> None:
    folder, _ = bert
    index = {m: i + 1 for i, m in enumerate(td.MODULES)}  # 1..3: class 0 has no rows, yet it is a class
    rows = [{"text": r["text"], "label": index[r["label"]]} for r in td.corpus()]
    data = load(td.write_csv(tmp_path / "d.csv", rows), folder)
    assert data.num_classes == 4 and set(labels(data.train)) == {1, 2, 3}
    jsonl = load(td.write_jsonl(tmp_path / "d.jsonl", rows), folder)
    assert torch.equal(jsonl.test.tensors[0], data.test.tensors[0])  # the same rows, read from either format


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_padding_is_masked_by_the_hf_wrapper(tmp_path: Path, kind: str) -> None:
    """The same text padded to 64 or to 16 ids gives the same logits: HFLogits masks the pad ids."""
    from amc.models import build_model

    folder, path = td.text_setup(tmp_path, kind)
    data = load(path, folder)
    model = build_model(f"hf:{folder}", in_channels=64, num_classes=3).eval()
    x = data.val.tensors[0][:4]
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x[:, :16]), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(model(x[:1]), model(x[1:2]))


def test_loaded_through_the_factory_dispatch(bert) -> None:
    from amc.data.factory import load_factory

    folder, path = bert
    data = load_factory(f"text:{path}", kwargs={"tokenizer": str(folder)}, val_size=10)
    assert len(data.val) == 10


def write(tmp_path: Path, text: str, suffix: str = ".jsonl") -> Path:
    path = tmp_path / f"bad{suffix}"
    path.write_text(text)
    return path


ERRORS = [
    ('{"text": "a b"}\n{"text": "c", "label": 1}\n', "row 1 lacks the label column(s)"),
    ('{"txt": "a b", "label": 0}\n', "row 1 lacks the text column(s)"),
    ('{"text": "a", "label": 0}\nnot json\n', "line 2 is not JSON"),
    ('{"text": "a", "label": 0.5}\n{"text": "b", "label": 1}\n', "has label 0.5; labels must be"),
    ('{"text": "a", "label": 0}\n{"text": "b", "label": "x"}\n', "mixes int labels and names ('x')"),
    ('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n', "has 1 class; a classifier needs at least two"),
    ("", "has no rows"),
]


@pytest.mark.parametrize(("text", "reason"), ERRORS)
def test_bad_files_are_refused_in_one_line(bert, tmp_path: Path, text: str, reason: str) -> None:
    with pytest.raises(DataError) as info:
        load(write(tmp_path, text), bert[0])
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_bad_setups_are_refused_in_one_line(bert, tmp_path: Path) -> None:
    folder, path = bert
    cases = [
        (lambda: load(tmp_path / "none.jsonl", folder), DataError, "no such file"),
        (lambda: load(write(tmp_path, "text,label\n", ".txt"), folder), DataError, "name a .jsonl or .csv file"),
        (lambda: load(write(tmp_path, "txt,label\na,0\n", ".csv"), folder), DataError, "lacks the text column"),
        (lambda: load(path, tmp_path), DataError, "has no tokenizer"),
        (lambda: load_dataset(f"text:{path}"), ConfigError, "needs a tokenizer: use it with --model hf:DIR"),
        (lambda: load(path, folder, settings={"size": 3}), ConfigError, "unknown --dataset-kwargs ['size']"),
        (lambda: load(path, folder, settings={"length": 0}), ConfigError, "must be a positive integer"),
        (lambda: load(path, folder, settings={"length": 65}), ConfigError, "max_position_embeddings 64"),
        (lambda: load(path, folder, root=tmp_path), ConfigError, "drop --data-dir"),
    ]
    for call, error, reason in cases:
        with pytest.raises(error) as info:
            call()
        assert reason in str(info.value) and "\n" not in str(info.value), (reason, str(info.value))


def test_a_model_whose_pad_id_is_not_the_tokenizers_is_refused(bert, tmp_path: Path) -> None:
    folder, path = bert
    other = tmp_path / "other"
    other.mkdir()
    for f in folder.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "pad_token_id": 3}))
    with pytest.raises(DataError, match=r"has pad_token_id 3, its tokenizer pads with id 0; save the model with"):
        load(path, other)


def test_hf_models_refuse_the_other_kind_of_data(bert, tmp_path: Path) -> None:
    """A text model on images and an image model on token ids: one line each, naming the fix."""
    import transformers

    from amc.models.sources import SOURCES, ModelSpec

    hf = SOURCES["hf"]
    folder, _ = bert
    with pytest.raises(ModelError, match=r"the datasets here are images: pass your text as --dataset text:FILE"):
        hf.build(str(folder), ModelSpec(in_channels=1, num_classes=3, input_size=(8, 8)), {})
    vit = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                 image_size=8, patch_size=4, num_channels=1, num_labels=3)
    transformers.ViTForImageClassification(vit).save_pretrained(tmp_path / "vit")
    with pytest.raises(ModelError, match=r"is an image model \(vit\), and the dataset gives token ids"):
        hf.build(str(tmp_path / "vit"), ModelSpec(in_channels=64, num_classes=3, input_size=(64,)), {})
