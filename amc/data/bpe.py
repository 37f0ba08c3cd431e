"""Tokenizers for language-model data: a byte-level BPE trained here, or a Hugging Face model folder's own.

The built-in LM's tokenizer is a byte-level BPE (GPT-2's scheme: any byte sequence encodes, nothing is
unknown) trained with the ``tokenizers`` library on the training documents only, so held-out text is
tokenized with merges it never saw. Training is deterministic for a given corpus and settings; the result
is cached as ``<cache_dir>/tokenizers/bpe-<key>.json``, where the key hashes the training documents, the
settings and the ``tokenizers`` version, like the base models' cache (:func:`amc.paths.default_cache_dir`).

A language model loaded from a folder (``hf:PATH``) reads text with the tokenizer saved beside it
(:func:`folder_tokenizer`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amc.data.code_corpus import Document
from amc.errors import ConfigError, DataError
from amc.paths import default_cache_dir

log = logging.getLogger(__name__)

END_OF_TEXT = "<|endoftext|>"  # the separator between documents, id 0 of a trained BPE


@dataclass(frozen=True, eq=False)
class TextTokenizer:
    """A ``tokenizers.Tokenizer`` and the id that separates documents.

    Attributes:
        backend: The fast tokenizer (``tokenizers.Tokenizer``).
        separator: Id put after every document (the end-of-text token).
        vocab_size: Number of ids it produces (``max id + 1``).
        fingerprint: Hash of its serialised form (16 hex digits): keys what is built on its ids.
        source: Where it came from, for messages: the cache file or the model folder.
    """

    backend: Any
    separator: int
    vocab_size: int
    fingerprint: str
    source: str

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens (no BOS or EOS added)."""
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)


def _tokenizers_module(what: str) -> Any:
    if importlib.util.find_spec("tokenizers") is None:
        raise ConfigError(f"{what} needs the tokenizers package: pip install -e '.[hf]'")
    import tokenizers

    return tokenizers


def _wrap(backend: Any, separator: int, source: str) -> TextTokenizer:
    text = backend.to_str()
    return TextTokenizer(backend=backend, separator=separator, vocab_size=backend.get_vocab_size(with_added_tokens=True),
                         fingerprint=hashlib.sha256(text.encode()).hexdigest()[:16], source=source)


def bpe_cache_path(documents: Sequence[Document], *, vocab_size: int, min_frequency: int = 2,
                   cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`train_bpe` caches the tokenizer of these documents and settings."""
    tokenizers = _tokenizers_module("a byte-level BPE")
    digest = hashlib.sha256()
    for doc in documents:
        digest.update(doc.name.encode() + b"\0" + hashlib.sha256(doc.text.encode()).digest())
    payload = json.dumps({"documents": digest.hexdigest(), "vocab_size": vocab_size, "min_frequency": min_frequency,
                          "tokenizers": ".".join(tokenizers.__version__.split(".")[:2])}, sort_keys=True)
    key = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "tokenizers" / f"bpe-{key}.json"


def train_bpe(documents: Sequence[Document], *, vocab_size: int = 2048, min_frequency: int = 2,
              cache_dir: str | os.PathLike | None = None) -> TextTokenizer:
    """A byte-level BPE with ``vocab_size`` ids trained on ``documents``, from the cache when it exists there.

    Id 0 is :data:`END_OF_TEXT`, ids 1..256 the byte alphabet, the rest merges (fewer when the documents
    run out of pairs seen ``min_frequency`` times). A cache file that does not load is trained over.

    Raises:
        ConfigError: ``vocab_size`` below 258 (the separator and 256 bytes, plus one merge), or no tokenizers.
        DataError: No documents.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 258:
        raise ConfigError(f"vocab_size={vocab_size!r} must be an integer >= 258 (256 bytes, the separator and "
                          "at least one merge); 2048 suits the built-in LM")
    if not documents:
        raise DataError("cannot train a BPE tokenizer on no documents; give the corpus at least one training file")
    tokenizers = _tokenizers_module("a byte-level BPE")
    path = bpe_cache_path(documents, vocab_size=vocab_size, min_frequency=min_frequency, cache_dir=cache_dir)
    if path.is_file():
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
            log.info("loaded cached BPE tokenizer %s", path)
            return _wrap(backend, backend.token_to_id(END_OF_TEXT), str(path))
        except Exception as exc:  # noqa: BLE001 (a corrupt file: the tokenizers library raises its own types)
            log.warning("ignoring unusable cached tokenizer %s (%s); training it again", path, exc)
    from tokenizers import decoders, models, pre_tokenizers, trainers

    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=[END_OF_TEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator((d.text for d in documents), trainer=trainer, length=len(documents))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    backend.save(str(tmp))
    os.replace(tmp, path)  # atomic: another process may train the same tokenizer at once
    log.info("trained a byte-level BPE of %d ids on %d documents: %s", backend.get_vocab_size(), len(documents), path)
    return _wrap(backend, backend.token_to_id(END_OF_TEXT), str(path))


def folder_tokenizer(path: str | os.PathLike) -> TextTokenizer:
    """The fast tokenizer saved in a Hugging Face model folder (``AutoTokenizer``, ``local_files_only``).

    Documents are separated by its end-of-text token (``eos_token``, else ``bos_token``).

    Raises:
        ConfigError: transformers is missing.
        DataError: The folder has no fast tokenizer, or one without an end-of-text or begin token.
    """
    if importlib.util.find_spec("transformers") is None:
        raise ConfigError(f"reading text with the tokenizer of {str(path)!r} needs transformers: pip install -e '.[hf]'")
    from transformers import AutoTokenizer

    folder = Path(path).expanduser()
    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 (missing files, unknown class: one line with the fix)
        raise DataError(f"cannot load a tokenizer from {str(folder)!r} ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]}); save one there with tokenizer.save_pretrained") from None
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise DataError(f"the tokenizer in {str(folder)!r} is a slow (Python) one; save its fast version "
                        "(tokenizer.json) there")
    separator = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
    if separator is None:
        raise DataError(f"the tokenizer in {str(folder)!r} has neither an eos_token nor a bos_token to separate "
                        "documents; set one and save it again")
    return _wrap(backend, int(separator), str(folder))


__all__ = ["END_OF_TEXT", "TextTokenizer", "bpe_cache_path", "folder_tokenizer", "train_bpe"]
