"""Train/val/test splits: the :class:`DataSplits` record and the seeded, stratified split rules.

The built-in datasets (:mod:`amc.data.datasets`) and a user's own data (:mod:`amc.data.factory`,
:mod:`amc.data.imagefolder`) carve and limit their splits with the same functions, so one seed gives one
split whatever the source.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, TensorDataset

from amc.errors import ConfigError, DataError

MAX_DEFAULT_VAL = 5000


def default_val_size(n_train: int) -> int:
    """Validation images carved from ``n_train`` training images of a user's data when ``val_size`` is not given."""
    return max(1, min(MAX_DEFAULT_VAL, round(0.1 * n_train)))


@dataclass(frozen=True)
class DataSplits:
    """Train/val/test splits of one dataset.

    The built-in loaders hold every split in memory as a ``TensorDataset``. A user's dataset
    (:mod:`amc.data.factory`, :mod:`amc.data.imagefolder`) gives any map-style ``Dataset`` whose items are ``(float32 image (C, H, W), int
    label)`` pairs, usually :class:`~amc.data.streaming.StreamedSplit` views; read them with
    :func:`amc.data.streaming.batches` or :func:`amc.data.streaming.take`, which handle both kinds.

    Attributes:
        train: Images ``(N, C, H, W)`` float32, standardised, and int64 labels.
        val: Same layout; carved from the training set, never from test (or a user's own val split).
        test: Same layout; the dataset's own test set (or a held-out 20% for digits).
        num_classes: Number of label classes; labels lie in ``[0, num_classes)``.
        input_shape: ``(C, H, W)`` of one image.
        name: Dataset name: one of ``DATASETS``, ``imagefolder`` or ``package.module:factory``.
        spec: What a streamed dataset is (its files, settings, factory arguments): part of the
            :meth:`fingerprint` of datasets that are not held in memory.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str
    spec: str = ""

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise DataError(f"num_classes={self.num_classes} must be at least 2.")
        for split, ds in (("train", self.train), ("val", self.val), ("test", self.test)):
            if not isinstance(ds, TensorDataset):
                self._check_streamed(split, ds)
                continue
            x, y = ds.tensors
            if x.dtype != torch.float32 or y.dtype != torch.int64:
                raise DataError(f"{split} tensors are {x.dtype}/{y.dtype}; expected float32 images "
                                "and int64 labels.")
            if tuple(x.shape[1:]) != tuple(self.input_shape) or len(x) == 0:
                raise DataError(f"{split} images have shape {tuple(x.shape)}; expected a non-empty "
                                f"(N, {', '.join(map(str, self.input_shape))}).")

    def _check_streamed(self, split: str, ds: Dataset) -> None:
        from amc.data.streaming import as_item

        source = getattr(ds, "source", f"{self.name} {split} split")
        if len(ds) == 0:
            raise DataError(f"{source} is empty; give it at least one image.")
        x, y = as_item(ds[0], source, 0)
        if tuple(x.shape) != tuple(self.input_shape):
            raise DataError(f"{source}: item 0 has an image of shape {tuple(x.shape)}; every image must be "
                            f"({', '.join(map(str, self.input_shape))}) like the first training image.")
        if not 0 <= y < self.num_classes:
            raise DataError(f"{source}: item 0 has label {y}; labels must lie in [0, {self.num_classes - 1}].")

    @property
    def in_memory(self) -> bool:
        """Every split is a ``TensorDataset`` (the built-in datasets)."""
        return all(isinstance(ds, TensorDataset) for ds in (self.train, self.val, self.test))

    def example(self, n: int = 1) -> torch.Tensor:
        """The first ``n`` validation images ``(n, C, H, W)`` (an example input of the model)."""
        from amc.data.streaming import take

        return take(self.val, range(min(n, len(self.val))))[0]

    def fingerprint(self) -> str:
        """Short stable hash of the name, split sizes and contents, for use as a cache key.

        In-memory splits are hashed whole. A streamed dataset is hashed by its :attr:`spec`, its known
        labels and 16 images of each split spread over it (reading every image would cost a pass
        over the data).
        """
        h = hashlib.sha256(f"{self.name}|{len(self.train)}|{len(self.val)}|{len(self.test)}".encode())
        if self.in_memory:
            for ds in (self.train, self.val, self.test):
                for t in ds.tensors:
                    h.update(np.ascontiguousarray(t.numpy()).data)
            return h.hexdigest()[:16]
        from amc.data.streaming import take

        h.update(self.spec.encode())
        for ds in (self.train, self.val, self.test):
            labels = getattr(ds, "labels", None)
            if isinstance(labels, np.ndarray):
                h.update(np.ascontiguousarray(labels, dtype=np.int64).data)
            x, y = take(ds, np.unique(np.linspace(0, len(ds) - 1, 16).round().astype(np.int64)))
            h.update(np.ascontiguousarray(x.numpy()).data)
            h.update(np.ascontiguousarray(y.numpy()).data)
        return h.hexdigest()[:16]


def split_count(size: int | float, n: int, what: str) -> int:
    """Turn a count or a fraction of ``n`` into a count in [1, n - 1]."""
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise ConfigError(f"{what}={size!r} must be an int count or a float fraction in (0, 1).")
    if isinstance(size, float):
        if not 0.0 < size < 1.0:
            raise ConfigError(f"{what}={size!r} as a fraction must lie in (0, 1).")
        size = round(size * n)
    if not 0 < size < n:
        raise ConfigError(f"{what}={size!r} must leave both parts non-empty: use 1..{n - 1} of the "
                          f"{n} training images.")
    return int(size)


def stratified_split(y: np.ndarray, n_out: int, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of ``arange(len(y))`` into (kept, ``n_out`` held out)."""
    try:
        kept, out = train_test_split(np.arange(len(y)), test_size=n_out, random_state=seed, stratify=y)
    except ValueError as e:  # sklearn: a class too rare, or a part smaller than the class count
        raise ConfigError(f"{what}: cannot take a stratified {n_out} of {len(y)} images ({e}). Choose a "
                          "size that leaves at least one image of every class on both sides.") from e
    return np.sort(kept), np.sort(out)


def limited(idx: np.ndarray, y: np.ndarray | None, limit: int | None, seed: int, what: str) -> np.ndarray:
    """A seeded subset of at most ``limit`` of ``idx``; ``None`` or a big limit keeps all.

    Stratified by ``y`` (labels indexed like ``idx``'s values) when labels are known, else uniform.
    """
    if limit is None:
        return idx
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ConfigError(f"{what}={limit!r} must be a positive int or None.")
    if limit >= len(idx):
        return idx
    if y is None:
        return np.sort(np.random.default_rng(seed).choice(idx, size=limit, replace=False))
    _, kept = stratified_split(y[idx], limit, seed, what)
    return idx[kept]
