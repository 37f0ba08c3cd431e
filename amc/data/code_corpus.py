"""A text corpus every machine has offline: the installed Python standard library's ``.py`` sources.

Why this corpus: the language-model work (issue 36) needs real text to train the built-in decoder on and to
measure perplexity with, and nothing may be downloaded. Every machine that runs this project has a Python
interpreter, and with it ~12 MB of real, varied, human-written code and docstrings (``sysconfig``'s
``stdlib`` folder), under the PSF licence. It is deterministic for a given Python version (the corpus
fingerprint keys every cache built on it, so another version trains its own tokenizer and model).

One file is one document. Left out: installed packages (``site-packages``, ``dist-packages``: they differ from
machine to machine), ``__pycache__``, the test suites (``test``, ``tests``, ``idle_test``; ~20 MB of
repetitive assertions, included with ``include_tests=True``) and two folders of generated tables rather than
code (``encodings``' codec maps and ``pydoc_data``'s one 750 KB string), which a model memorises and which
would flatter its perplexity. Files that are not UTF-8 are skipped (logged).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from amc.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SKIPPED_FOLDERS = frozenset({"site-packages", "dist-packages", "__pycache__"})
TEST_FOLDERS = frozenset({"test", "tests", "idle_test"})
TABLE_FOLDERS = frozenset({"encodings", "pydoc_data"})


@dataclass(frozen=True)
class Document:
    """One source file: its path relative to the corpus root (POSIX spelling) and its text."""

    name: str
    text: str


@dataclass(frozen=True)
class CodeCorpus:
    """Documents in a deterministic order (sorted by name), and where they were read from.

    Attributes:
        root: The folder the files were read from.
        documents: The documents, sorted by name.
        fingerprint: Hash of every document's name and text (16 hex digits): keys what is built on the corpus.
    """

    root: str
    documents: tuple[Document, ...]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.documents)

    @property
    def num_bytes(self) -> int:
        """UTF-8 size of all the texts."""
        return sum(len(d.text.encode()) for d in self.documents)


def stdlib_root() -> Path:
    """The installed standard library's source folder (``sysconfig.get_paths()["stdlib"]``)."""
    return Path(sysconfig.get_paths()["stdlib"])


def load_code_corpus(root: str | os.PathLike | None = None, *, max_bytes: int | None = None,
                     include_tests: bool = False) -> CodeCorpus:
    """The ``.py`` files under ``root`` (default: the standard library) as a :class:`CodeCorpus`.

    Args:
        root: Folder to read (default :func:`stdlib_root`). Any folder of ``.py`` files works (tests use a
            small one); ``encodings`` and ``pydoc_data`` are left out of the standard library only.
        max_bytes: Keep documents until their total size would pass this many bytes. The documents are taken
            in the order of a hash of their names, so a capped corpus samples the whole library rather than
            its alphabetical start; the same cap gives the same documents on every machine with the same
            files. None: every document.
        include_tests: Also read the test-suite folders (``test``, ``tests``, ``idle_test``).

    Raises:
        ConfigError: ``max_bytes`` is not a positive integer.
        DataError: ``root`` is no folder, or it holds no readable ``.py`` file (within the cap).
    """
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
        raise ConfigError(f"max_bytes={max_bytes!r} must be a positive integer (bytes of source) or None (all)")
    base = Path(root).expanduser() if root is not None else stdlib_root()
    if not base.is_dir():
        raise DataError(f"code corpus folder {str(base)!r} does not exist; pass a folder of .py files")
    skipped = SKIPPED_FOLDERS | (frozenset() if include_tests else TEST_FOLDERS)
    if root is None:
        skipped |= TABLE_FOLDERS
    names = sorted(
        rel.as_posix() for rel in (p.relative_to(base) for p in base.rglob("*.py"))
        if not skipped.intersection(rel.parts[:-1])
    )
    if max_bytes is not None:  # a hash order samples every package; it depends on names only, not on the machine
        names = sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    documents, total, not_utf8 = [], 0, 0
    for name in names:
        try:
            text = (base / name).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            not_utf8 += 1
            continue
        size = len(text.encode())
        if max_bytes is not None and total + size > max_bytes:
            continue  # a smaller later file may still fit
        documents.append(Document(name, text))
        total += size
    if not_utf8:
        log.info("code corpus %s: skipped %d files that are not UTF-8", base, not_utf8)
    if not documents:
        raise DataError(f"code corpus folder {str(base)!r} has no readable .py file"
                        f"{'' if max_bytes is None else f' of at most {max_bytes} bytes'}; pass a folder of "
                        "UTF-8 .py files or a larger max_bytes")
    documents.sort(key=lambda d: d.name)
    digest = hashlib.sha256()
    for doc in documents:
        digest.update(doc.name.encode() + b"\0" + hashlib.sha256(doc.text.encode()).digest())
    log.info("code corpus %s: %d documents, %d bytes", base, len(documents), total)
    return CodeCorpus(root=str(base), documents=tuple(documents), fingerprint=digest.hexdigest()[:16])


__all__ = ["CodeCorpus", "Document", "load_code_corpus", "stdlib_root"]
