"""Tests for the language-model data: the code corpus, the BPE tokenizer and the token splits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amc.data.bpe import END_OF_TEXT, bpe_cache_path, folder_tokenizer, train_bpe
from amc.data.code_corpus import load_code_corpus, stdlib_root
from amc.data.lm_tokens import LMDataConfig, load_lm_data, split_documents
from amc.errors import ConfigError, DataError

CAP = 150_000  # bytes of the standard library: a few dozen files


@pytest.fixture(scope="module")
def corpus():
    return load_code_corpus(max_bytes=CAP)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lm-cache")


@pytest.fixture(scope="module")
def data(corpus, cache):
    return load_lm_data(LMDataConfig(seq_len=32, vocab_size=300, calibration=0.2, heldout=0.2), corpus=corpus,
                        cache_dir=cache)


def test_corpus_is_the_standard_library_sorted_and_capped(corpus) -> None:
    names = [d.name for d in corpus.documents]
    assert corpus.root == str(stdlib_root())
    assert names == sorted(names) and len(names) >= 10
    assert all(n.endswith(".py") for n in names)
    skipped = {"site-packages", "test", "tests", "encodings", "pydoc_data", "__pycache__"}
    assert not any(skipped.intersection(n.split("/")[:-1]) for n in names)
    assert 0.5 * CAP < corpus.num_bytes <= CAP
    assert len({n.split("/")[0] for n in names if "/" in n}) >= 3  # a hash order samples the packages
    again = load_code_corpus(max_bytes=CAP)
    assert again.fingerprint == corpus.fingerprint and again.documents == corpus.documents
    assert load_code_corpus(max_bytes=CAP // 2).fingerprint != corpus.fingerprint


def test_a_folder_of_files_and_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "tests").mkdir(parents=True)
    (tmp_path / "b.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "a.py").write_text("def f():\n    return 2\n")
    (tmp_path / "pkg" / "tests" / "test_a.py").write_text("assert True\n")
    (tmp_path / "latin.py").write_bytes(b"s = '\xe9'\n")  # not UTF-8: skipped
    (tmp_path / "notes.txt").write_text("not python")
    corpus = load_code_corpus(tmp_path)
    assert [d.name for d in corpus.documents] == ["b.py", "pkg/a.py"]
    assert corpus.documents[0].text == "x = 1\n"
    assert [d.name for d in load_code_corpus(tmp_path, include_tests=True).documents] == [
        "b.py", "pkg/a.py", "pkg/tests/test_a.py"]
    with pytest.raises(ConfigError, match="max_bytes=0"):
        load_code_corpus(tmp_path, max_bytes=0)
    with pytest.raises(DataError, match="does not exist"):
        load_code_corpus(tmp_path / "missing")
    with pytest.raises(DataError, match="at most 3 bytes"):
        load_code_corpus(tmp_path, max_bytes=3)


def test_split_by_document_is_a_seeded_partition() -> None:
    train, cal, held = split_documents(50, calibration=0.1, heldout=0.2, seed=0)
    assert (len(train), len(cal), len(held)) == (35, 5, 10)
    assert sorted([*train, *cal, *held]) == list(range(50))
    again = split_documents(50, calibration=0.1, heldout=0.2, seed=0)
    assert all((a == b).all() for a, b in zip(again, (train, cal, held)))
    assert not (split_documents(50, calibration=0.1, heldout=0.2, seed=1)[2] == held).all()
    assert [len(s) for s in split_documents(3, calibration=0.01, heldout=0.01, seed=0)] == [1, 1, 1]
    with pytest.raises(DataError, match="at least 3 documents"):
        split_documents(2, calibration=0.1, heldout=0.1, seed=0)
    with pytest.raises(ConfigError, match="leaves no training"):
        LMDataConfig(calibration=0.5, heldout=0.5)


def test_bpe_is_trained_on_the_training_documents_cached_and_deterministic(corpus, data, cache, tmp_path) -> None:
    train_docs = [d for d in corpus.documents if d.name in set(data.train.documents)]
    path = bpe_cache_path(train_docs, vocab_size=300, cache_dir=cache)
    assert path.is_file() and data.tokenizer.source == str(path)
    assert data.tokenizer.vocab_size == 300 and data.tokenizer.separator == 0
    assert data.tokenizer.backend.id_to_token(0) == END_OF_TEXT
    cached = train_bpe(train_docs, vocab_size=300, cache_dir=cache)
    fresh = train_bpe(train_docs, vocab_size=300, cache_dir=tmp_path)  # trained again, elsewhere
    assert cached.fingerprint == fresh.fingerprint == data.tokenizer.fingerprint
    text = corpus.documents[0].text
    ids = data.tokenizer.encode([text])[0]
    assert data.tokenizer.decode(ids) == text and len(ids) < len(text.encode()) / 1.5  # merges compress
    assert data.tokenizer.encode(["ü → 𝔸"])[0]  # any bytes encode (byte-level)
    with pytest.raises(ConfigError, match="vocab_size=100"):
        train_bpe(train_docs, vocab_size=100, cache_dir=tmp_path)


def test_splits_are_disjoint_documents_and_windows_are_int64(corpus, data) -> None:
    parts = [set(data.train.documents), set(data.calibration.documents), set(data.heldout.documents)]
    assert set.union(*parts) == {d.name for d in corpus.documents}
    assert sum(map(len, parts)) == len(corpus)
    tok = data.tokenizer
    name = data.heldout.documents[0]
    first = tok.encode([next(d.text for d in corpus.documents if d.name == name)])[0]
    assert data.heldout.tokens[: len(first) + 1].tolist() == [*first, tok.separator]  # document, then separator
    assert int((data.heldout.tokens == tok.separator).sum()) == len(data.heldout.documents)
    windows = data.calibration.windows(32)
    assert windows.dtype == torch.int64 and windows.shape == (len(data.calibration) // 32, 32)
    assert torch.equal(windows.flatten(), data.calibration.tokens[: windows.numel()])
    assert data.calibration.windows(32, limit=2).shape == (2, 32)
    batches = list(data.calibration.batches(3, 32, limit=7))
    assert [b.shape[0] for b in batches] == [3, 3, 1] and torch.equal(torch.cat(batches), windows[:7])
    a = data.train.sample(4, 32, torch.Generator().manual_seed(5))
    b = data.train.sample(4, 32, torch.Generator().manual_seed(5))
    assert a.shape == (4, 32) and a.dtype == torch.int64 and torch.equal(a, b)
    assert int(a.max()) < tok.vocab_size
    with pytest.raises(DataError, match="fewer than one window"):
        data.heldout.windows(len(data.heldout) + 1)


def test_a_second_load_reuses_the_caches_and_the_seed_changes_the_split(corpus, data, cache) -> None:
    again = load_lm_data(data.config, corpus=corpus, cache_dir=cache)
    assert again.fingerprint() == data.fingerprint()
    assert torch.equal(again.heldout.tokens, data.heldout.tokens)
    assert len(list((cache / "tokens").glob("ids-*.pt"))) == 1
    other = load_lm_data(LMDataConfig(seq_len=32, vocab_size=300, calibration=0.2, heldout=0.2, seed=1),
                         corpus=corpus, cache_dir=cache)
    assert other.heldout.documents != data.heldout.documents and other.fingerprint() != data.fingerprint()


def test_a_model_folders_tokenizer_reads_the_text(corpus, data, cache, tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=data.tokenizer.backend, eos_token=END_OF_TEXT)
    fast.save_pretrained(tmp_path / "model")
    assert folder_tokenizer(tmp_path / "model").separator == 0
    theirs = load_lm_data(LMDataConfig(seq_len=32, calibration=0.2, heldout=0.2, tokenizer=str(tmp_path / "model")),
                          corpus=corpus, cache_dir=cache)
    assert torch.equal(theirs.heldout.tokens, data.heldout.tokens)
    assert theirs.name == f"code:{tmp_path / 'model'}"
    with pytest.raises(DataError, match="cannot load a tokenizer"):
        folder_tokenizer(tmp_path / "empty")
