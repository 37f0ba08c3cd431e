"""Token data for language models: the code corpus split by document, as streams of int64 token ids.

The documents of a :class:`~amc.data.code_corpus.CodeCorpus` (by default the Python standard library's
sources: see :mod:`amc.data.code_corpus` for which and why) are split *by document*, seeded, into three
parts, so that no file contributes text to two of them:

| split         | what it is for                                                                 |
|---------------|--------------------------------------------------------------------------------|
| ``train``     | training the built-in LM, and the byte-level BPE it reads (:mod:`amc.data.bpe`) |
| ``calibration`` | what pruning sees: Wanda's and SparseGPT's activations, the KL score         |
| ``heldout``   | the held-out perplexity every result reports; never seen by a search          |

Each split is one stream: every document's ids followed by the end-of-text separator, documents in name
order. :meth:`TokenSplit.windows` cuts it into non-overlapping windows ``(N, T)``; :meth:`TokenSplit.sample`
draws windows at random offsets (for training). Encoding the corpus takes ~20 s on a busy 2-core CPU, so the
ids are cached as ``<cache_dir>/tokens/ids-<key>.pt`` (keyed by the corpus and the tokenizer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from amc.data.bpe import TextTokenizer, folder_tokenizer, train_bpe
from amc.data.code_corpus import CodeCorpus, load_code_corpus
from amc.errors import ConfigError, DataError
from amc.paths import default_cache_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMDataConfig:
    """How the token data is built.

    Attributes:
        seq_len: Tokens per window ``T``.
        vocab_size: Ids of the trained BPE (ignored with ``tokenizer``).
        calibration: Fraction of the documents in the calibration split (at least one document).
        heldout: Fraction of the documents in the held-out split (at least one document).
        seed: Seed of the split by document.
        max_bytes: Cap on the corpus size (:func:`~amc.data.code_corpus.load_code_corpus`); None: all of it.
        tokenizer: A Hugging Face model folder whose tokenizer reads the text (for ``hf:PATH`` models); None:
            a byte-level BPE trained on the training documents.
        include_tests: Also read the standard library's test suites.
    """

    seq_len: int = 128
    vocab_size: int = 2048
    calibration: float = 0.1
    heldout: float = 0.1
    seed: int = 0
    max_bytes: int | None = None
    tokenizer: str | None = None
    include_tests: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise ConfigError(f"seq_len={self.seq_len!r} must be an integer >= 2 (tokens per window)")
        for name in ("calibration", "heldout"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ConfigError(f"{name}={value!r} must be a fraction of the documents in (0, 1)")
        if self.calibration + self.heldout >= 1:
            raise ConfigError(f"calibration + heldout = {self.calibration + self.heldout} leaves no training "
                              "documents; keep their sum below 1")


@dataclass(frozen=True, eq=False)
class TokenSplit:
    """One split: its documents and their ids as one stream.

    Attributes:
        name: ``train``, ``calibration`` or ``heldout``.
        documents: Names of its documents, in stream order.
        tokens: ``(L,)`` int64 ids: each document's, then the separator.
    """

    name: str
    documents: tuple[str, ...]
    tokens: Tensor

    def __len__(self) -> int:
        return int(self.tokens.numel())

    def windows(self, length: int, *, limit: int | None = None) -> Tensor:
        """Non-overlapping windows ``(N, length)`` int64 from the start of the stream (the rest dropped).

        Args:
            length: Tokens per window.
            limit: At most this many windows (the first ones); None: all.

        Raises:
            DataError: The split is shorter than one window.
        """
        n = len(self) // length
        if n == 0:
            raise DataError(f"the {self.name} split has {len(self)} tokens, fewer than one window of {length}; "
                            "use a shorter seq_len, a larger fraction for it or a larger corpus")
        if limit is not None:
            n = min(n, limit)
        return self.tokens[: n * length].view(n, length)

    def batches(self, batch_size: int, length: int, *, limit: int | None = None) -> Iterator[Tensor]:
        """The :meth:`windows` in order, ``batch_size`` at a time: ``(B, length)`` int64 (the last may be smaller)."""
        yield from self.windows(length, limit=limit).split(batch_size)

    def sample(self, batch_size: int, length: int, generator: torch.Generator) -> Tensor:
        """``batch_size`` windows ``(B, length)`` int64 at offsets drawn uniformly from ``generator``."""
        if len(self) < length:
            raise DataError(f"the {self.name} split has {len(self)} tokens, fewer than one window of {length}")
        starts = torch.randint(0, len(self) - length + 1, (batch_size,), generator=generator)
        return self.tokens[starts[:, None] + torch.arange(length)]


@dataclass(frozen=True, eq=False)
class LMData:
    """The three splits, the tokenizer that made them and the window length.

    Attributes:
        train, calibration, heldout: The splits (:class:`TokenSplit`).
        tokenizer: The tokenizer (:class:`~amc.data.bpe.TextTokenizer`).
        seq_len: Tokens per window ``T``.
        corpus: The corpus's fingerprint and root.
        config: The settings it was built with.
    """

    train: TokenSplit
    calibration: TokenSplit
    heldout: TokenSplit
    tokenizer: TextTokenizer
    seq_len: int
    corpus: tuple[str, str]
    config: LMDataConfig

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def name(self) -> str:
        return "code" if self.config.tokenizer is None else f"code:{self.config.tokenizer}"

    def fingerprint(self) -> str:
        """Hash of the corpus, the tokenizer and the split (16 hex digits): keys models trained on this data."""
        payload = json.dumps({"corpus": self.corpus[0], "tokenizer": self.tokenizer.fingerprint,
                              "seq_len": self.seq_len, "calibration": self.config.calibration,
                              "heldout": self.config.heldout, "seed": self.config.seed}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def split_documents(n: int, *, calibration: float, heldout: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices ``(train, calibration, heldout)`` of ``n`` documents, each sorted, from a seeded permutation.

    Each of calibration and heldout gets ``round(fraction * n)`` documents, at least one; train the rest.

    Raises:
        DataError: Fewer than three documents.
    """
    if n < 3:
        raise DataError(f"splitting by document needs at least 3 documents, the corpus has {n}; use a larger corpus")
    n_held = max(1, round(heldout * n))
    n_cal = max(1, round(calibration * n))
    if n_held + n_cal >= n:
        raise DataError(f"{n} documents leave none for training after {n_cal} calibration and {n_held} held-out "
                        "ones; use a larger corpus or smaller fractions")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_held + n_cal:]), np.sort(order[n_held: n_held + n_cal]), np.sort(order[:n_held])


def load_lm_data(config: LMDataConfig = LMDataConfig(), *, root: str | os.PathLike | None = None,
                 corpus: CodeCorpus | None = None, cache_dir: str | os.PathLike | None = None) -> LMData:
    """The code corpus tokenized and split by document (see the module docstring).

    Args:
        config: Window length, tokenizer and split settings.
        root: Folder of ``.py`` files (default: the standard library); ignored with ``corpus``.
        corpus: An already loaded corpus.
        cache_dir: Where the tokenizer and the ids are cached (default :func:`amc.paths.default_cache_dir`).

    Raises:
        ConfigError, DataError: Bad settings, a corpus too small to split, or a tokenizer that cannot load.
    """
    if corpus is None:
        corpus = load_code_corpus(root, max_bytes=config.max_bytes, include_tests=config.include_tests)
    docs = corpus.documents
    train_idx, cal_idx, held_idx = split_documents(len(docs), calibration=config.calibration,
                                                   heldout=config.heldout, seed=config.seed)
    if config.tokenizer is None:
        tokenizer = train_bpe([docs[i] for i in train_idx], vocab_size=config.vocab_size, cache_dir=cache_dir)
    else:
        tokenizer = folder_tokenizer(config.tokenizer)
    ids, offsets = _encoded(corpus, tokenizer, cache_dir)

    def split(name: str, idx: np.ndarray) -> TokenSplit:
        parts = []
        for i in idx:
            parts.append(ids[offsets[i]: offsets[i + 1]])
            parts.append(torch.tensor([tokenizer.separator], dtype=torch.int32))
        return TokenSplit(name, tuple(docs[i].name for i in idx), torch.cat(parts).long())

    data = LMData(train=split("train", train_idx), calibration=split("calibration", cal_idx),
                  heldout=split("heldout", held_idx), tokenizer=tokenizer, seq_len=config.seq_len,
                  corpus=(corpus.fingerprint, corpus.root), config=config)
    log.info("LM data: train %d tokens (%d documents), calibration %d (%d), held-out %d (%d), %d ids, T=%d",
             len(data.train), len(train_idx), len(data.calibration), len(cal_idx), len(data.heldout), len(held_idx),
             tokenizer.vocab_size, config.seq_len)
    return data


def _encoded(corpus: CodeCorpus, tokenizer: TextTokenizer, cache_dir: str | os.PathLike | None) -> tuple[Tensor, list[int]]:
    """``(ids, offsets)``: every document's int32 ids end to end; document ``i`` is ``ids[offsets[i]:offsets[i+1]]``."""
    key = hashlib.sha256(f"{corpus.fingerprint}:{tokenizer.fingerprint}".encode()).hexdigest()[:16]
    path = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "tokens" / f"ids-{key}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            ids, offsets = saved["ids"], saved["offsets"].tolist()
            if len(offsets) == len(corpus) + 1 and offsets[-1] == ids.numel():
                return ids, offsets
            log.warning("ignoring cached token ids %s of another corpus; encoding again", path)
        except Exception as exc:  # noqa: BLE001 (a corrupt file: torch raises several types)
            log.warning("ignoring unusable cached token ids %s (%s); encoding again", path, exc)
    encoded = tokenizer.encode([d.text for d in corpus.documents])
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).tolist()
    ids = torch.tensor([i for e in encoded for i in e], dtype=torch.int32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"ids": ids, "offsets": torch.tensor(offsets, dtype=torch.int64)}, tmp)
    os.replace(tmp, path)
    return ids, offsets


__all__ = ["LMData", "LMDataConfig", "TokenSplit", "load_lm_data", "split_documents"]
