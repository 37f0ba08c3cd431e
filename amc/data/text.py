"""A user's text-classification data: ``--dataset text:FILE``, for Hugging Face text classifiers (``hf:PATH``).

``FILE`` is a ``.jsonl`` file (one JSON object a line) or a ``.csv`` file (with a header row) with a ``text``
and a ``label`` column. Labels are class indices (ints >= 0, also written as digits in a CSV) or names
(strings), mapped to indices in sorted order. The rows are split like the other datasets
(:mod:`amc.data.splits`): a stratified ``test_size`` (default 20%) is held out, then ``--val-size`` (default
10% of the rest, at most 5,000) is carved from the rest; ``--train-limit`` and ``test_limit`` keep stratified
subsets, all seeded.

Each text is tokenized with the model's own tokenizer (``AutoTokenizer.from_pretrained(DIR,
local_files_only=True)``, where ``DIR`` is the ``hf:`` model folder, or ``--dataset-kwargs
'{"tokenizer": DIR}'``), truncated and padded with its pad token to ``length`` ids (``--dataset-kwargs
'{"length": 128}'``; default 64). The ids are held as float32 tensors ``(N, length)``, like images, so every
part of the project feeds them unchanged; :class:`amc.models.from_hf.HFLogits` reads them back as ids and
masks the padding (``ids != pad_token_id``).

Settings (``--dataset-kwargs``): ``tokenizer`` (folder), ``length`` (ids per text), ``test_size`` (count
or fraction of the rows).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from amc.data.splits import (
    DataSplits,
    default_val_size,
    limited,
    split_count,
    stratified_split,
)
from amc.data.streaming import one_line
from amc.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_LENGTH = 64
_FLOAT_EXACT = 2**24  # token ids up to this are exact in float32


@dataclass(frozen=True)
class TextSettings:
    """``--dataset-kwargs`` of a text dataset.

    Attributes:
        tokenizer: The folder holding the tokenizer (the ``hf:`` model's folder).
        length: Ids per text: longer texts are truncated, shorter ones padded with the pad token.
        test_size: Rows held out as the test split: a count or a fraction in (0, 1).
    """

    tokenizer: str
    length: int = DEFAULT_LENGTH
    test_size: int | float = 0.2

    def __post_init__(self) -> None:
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 1:
            raise ConfigError(f"--dataset-kwargs length={self.length!r} must be a positive integer (ids per text)")

    @classmethod
    def read(cls, spec: str, settings: dict) -> TextSettings:
        unknown = sorted(set(settings) - {"tokenizer", "length", "test_size"})
        if unknown:
            raise ConfigError(f"--dataset {spec}: unknown --dataset-kwargs {unknown}; a text dataset takes "
                              "tokenizer, length and test_size")
        if not settings.get("tokenizer"):
            raise ConfigError(f"--dataset {spec} needs a tokenizer: use it with --model hf:DIR (DIR's tokenizer "
                              "is used) or pass --dataset-kwargs '{\"tokenizer\": \"DIR\"}'")
        return cls(**{**settings, "tokenizer": str(settings["tokenizer"])})


def load_text(spec: str, *, root: str | os.PathLike | None = None, settings: dict | None = None, seed: int = 0,
              val_size: int | float | None = None, train_limit: int | None = None,
              test_limit: int | None = None) -> DataSplits:
    """The splits of ``--dataset text:FILE`` (see the module docstring).

    Args:
        spec: ``text:FILE``.
        root: Not used (the file is named in ``spec``); given, it is an error.
        settings: ``--dataset-kwargs`` (:class:`TextSettings`).
        seed: Seed of every split and subset.
        val_size: Validation rows carved from the non-test rows (count or fraction).
        train_limit: Keep at most this many training rows (stratified, after carving val).
        test_limit: Keep at most this many test rows (stratified).

    Raises:
        ConfigError: Bad settings or split sizes.
        DataError: A missing or malformed file, missing columns, bad labels or a missing tokenizer.
    """
    path = Path(spec.partition(":")[2]).expanduser()
    if root is not None:
        raise ConfigError(f"--data-dir {str(root)!r} is not used by --dataset {spec} (the file is named in it); "
                          "drop --data-dir")
    opts = TextSettings.read(spec, dict(settings or {}))
    texts, raw = _read_rows(path)
    y, names = _labels(raw, path)
    tokenizer = _tokenizer(opts.tokenizer, spec)
    _check_model(opts, spec, tokenizer.pad_token_id)
    ids = _tokenize(tokenizer, texts, opts.length, spec)
    rest, test = stratified_split(y, split_count(opts.test_size, len(y), "test_size"), seed, "test_size")
    n_val = split_count(default_val_size(len(rest)) if val_size is None else val_size, len(rest), "val_size")
    kept, val = stratified_split(y[rest], n_val, seed, "val_size")
    train = limited(rest[kept], y, train_limit, seed, "train_limit")
    test = limited(test, y, test_limit, seed, "test_limit")

    def wrap(idx: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(ids[idx]), torch.from_numpy(y[idx]))

    description = {"text": str(path.resolve()), "tokenizer": str(Path(opts.tokenizer).expanduser().resolve()),
                   "length": opts.length, "test_size": opts.test_size, "classes": names}
    splits = DataSplits(train=wrap(train), val=wrap(rest[val]), test=wrap(test), num_classes=len(names),
                        input_shape=(opts.length,), name=spec, spec=json.dumps(description, sort_keys=True))
    log.info("Loaded %s: train=%d val=%d test=%d, %d ids a text, %d classes, seed %d", spec, len(splits.train),
             len(splits.val), len(splits.test), opts.length, len(names), seed)
    return splits


def _read_rows(path: Path) -> tuple[list[str], list[object]]:
    """``(texts, raw labels)`` of a .jsonl or .csv file."""
    if path.suffix not in (".jsonl", ".csv"):
        raise DataError(f"--dataset text:{path}: name a .jsonl or .csv file with text and label columns")
    if not path.is_file():
        raise DataError(f"--dataset text:{path}: no such file; name a .jsonl or .csv file with text and label columns")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f)) if path.suffix == ".csv" else [_json_row(line, path, i)
                                                                       for i, line in enumerate(f, 1) if line.strip()]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read --dataset text:{path} ({type(exc).__name__}: {exc}); fix the file") from None
    if not rows:
        raise DataError(f"--dataset text:{path} has no rows; give it text and label columns")
    for i, row in enumerate(rows, 1):
        missing = [c for c in ("text", "label") if row.get(c) is None]
        if missing:
            raise DataError(f"--dataset text:{path}: row {i} lacks the {' and '.join(missing)} column(s) (it has "
                            f"{sorted(map(str, row))}); every row needs text and label")
        if not isinstance(row["text"], str):
            raise DataError(f"--dataset text:{path}: row {i} has text {row['text']!r}; the text must be a string")
    return [row["text"] for row in rows], [row["label"] for row in rows]


def _json_row(line: str, path: Path, number: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"--dataset text:{path}: line {number} is not JSON ({exc.msg}); write one object a line") from None
    if not isinstance(row, dict):
        raise DataError(f"--dataset text:{path}: line {number} is a {type(row).__name__}; write one JSON object "
                        "with text and label a line")
    return row


def _labels(raw: list[object], path: Path) -> tuple[np.ndarray, list[str]]:
    """Class indices and class names: ints (or digit strings) as they are, other strings in sorted order."""
    bad = next((v for v in raw if isinstance(v, bool) or not isinstance(v, (int, str))
                or isinstance(v, int) and v < 0), None)
    if bad is not None:
        raise DataError(f"--dataset text:{path} has label {bad!r}; labels must be class indices (ints >= 0) or "
                        "class names (strings)")
    if all(isinstance(v, int) or v.strip().isdigit() for v in raw):
        y = np.array([int(v) for v in raw], dtype=np.int64)
        names = [str(i) for i in range(int(y.max()) + 1)]
    elif any(isinstance(v, int) for v in raw):
        raise DataError(f"--dataset text:{path} mixes int labels and names ({next(v for v in raw if isinstance(v, str))!r}); "
                        "use class indices only or names only")
    else:
        names = sorted(set(raw))
        index = {name: i for i, name in enumerate(names)}
        y = np.array([index[v] for v in raw], dtype=np.int64)
    if len(names) < 2:
        raise DataError(f"--dataset text:{path} has {len(names)} class; a classifier needs at least two")
    return y, names


def _tokenizer(folder: str, spec: str):
    path = Path(folder).expanduser()
    try:
        import transformers
    except ImportError:
        raise DataError(f"--dataset {spec} needs transformers to tokenize: pip install -e '.[hf]'") from None
    files = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model")
    if not path.is_dir() or not any((path / f).is_file() for f in files):
        raise DataError(f"--dataset {spec}: {str(path)!r} has no tokenizer (no {' or '.join(files[:2])}); save it "
                        "there with tokenizer.save_pretrained(DIR)")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 (a tokenizer transformers cannot load: one line, with the fix)
        raise DataError(f"--dataset {spec}: cannot load the tokenizer in {str(path)!r} ({one_line(exc)}); save it "
                        "with tokenizer.save_pretrained(DIR)") from None
    if tokenizer.pad_token_id is None:
        raise DataError(f"--dataset {spec}: the tokenizer in {str(path)!r} has no pad token, which pads texts to "
                        "one length; set tokenizer.pad_token (and the model's pad_token_id) and save both again")
    return tokenizer


def _check_model(opts: TextSettings, spec: str, pad: int) -> None:
    """The model in the tokenizer's folder (its config.json, when there is one) has positions for ``length`` ids
    and masks the tokenizer's pad id."""
    config_path = Path(opts.tokenizer).expanduser() / "config.json"
    if not config_path.is_file():
        return
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError):
        return  # the model loader says what is wrong with it
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and opts.length > positions:
        raise ConfigError(f"--dataset {spec}: length {opts.length} exceeds the model's max_position_embeddings "
                          f"{positions}; pass --dataset-kwargs '{{\"length\": {positions}}}' or less")
    if config.get("pad_token_id") != pad:
        raise DataError(f"--dataset {spec}: the model in {str(config_path.parent)!r} has pad_token_id "
                        f"{config.get('pad_token_id')}, its tokenizer pads with id {pad}; save the model with "
                        f"config.pad_token_id = {pad} so padding is masked")


def _tokenize(tokenizer, texts: list[str], length: int, spec: str) -> np.ndarray:
    ids = tokenizer(texts, padding="max_length", truncation=True, max_length=length)["input_ids"]
    ids = np.asarray(ids, dtype=np.int64)  # (N, length)
    if ids.shape != (len(texts), length):
        raise DataError(f"--dataset {spec}: the tokenizer gave ids of shape {ids.shape}, expected "
                        f"({len(texts)}, {length}); use a tokenizer that pads and truncates")
    if ids.max() >= _FLOAT_EXACT:
        raise DataError(f"--dataset {spec}: token id {int(ids.max())} is too large to hold exactly (>= 2**24)")
    return ids.astype(np.float32)


__all__ = ["DEFAULT_LENGTH", "TextSettings", "load_text"]
