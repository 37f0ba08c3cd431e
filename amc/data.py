"""Datasets for pruning-policy search: seeded, stratified train/val/test splits.

Every loader reads local files only (or sklearn's bundled digits) and never downloads. The validation
split is always carved from the training set, so the test set stays untouched by the search. Images
are standardised with statistics of the final training split only.

Supported datasets (``DATASETS``):

- ``digits``: ``sklearn.datasets.load_digits``, input (1, 8, 8); 20% test, default ``val_size`` 0.15
  of the rest.
- ``fashion-mnist``: IDX files, default root ``DEFAULT_FASHION_MNIST_DIR``, input (1, 28, 28); default
  ``val_size`` 5000.
- ``mnist``: IDX files, ``root`` required, input (1, 28, 28); default ``val_size`` 5000.
- ``cifar10``: ``cifar-10-batches-py`` pickles, ``root`` required, input (3, 32, 32); default
  ``val_size`` 5000.

These are held in memory as ``TensorDataset`` splits. A user's own data is streamed instead
(:mod:`amc.userdata`): ``imagefolder`` (one folder of PNG/JPEG files per class) and
``package.module:factory`` (a function returning ``torch.utils.data.Dataset`` objects); their splits
are :class:`~amc.streaming.StreamedSplit` views read through ``DataLoader``s.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, TensorDataset

from amc.choices import DATASETS
from amc.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


@dataclass(frozen=True)
class DataSplits:
    """Train/val/test splits of one dataset.

    The built-in loaders hold every split in memory as a ``TensorDataset``. A user's dataset
    (:mod:`amc.userdata`) gives any map-style ``Dataset`` whose items are ``(float32 image (C, H, W), int
    label)`` pairs, usually :class:`~amc.streaming.StreamedSplit` views; read them with
    :func:`amc.streaming.batches` or :func:`amc.streaming.take`, which handle both kinds.

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
        from amc.streaming import as_item

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
        from amc.streaming import take

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
        from amc.streaming import take

        h.update(self.spec.encode())
        for ds in (self.train, self.val, self.test):
            labels = getattr(ds, "labels", None)
            if isinstance(labels, np.ndarray):
                h.update(np.ascontiguousarray(labels, dtype=np.int64).data)
            x, y = take(ds, np.unique(np.linspace(0, len(ds) - 1, 16).round().astype(np.int64)))
            h.update(np.ascontiguousarray(x.numpy()).data)
            h.update(np.ascontiguousarray(y.numpy()).data)
        return h.hexdigest()[:16]


def load_dataset(name: str = "digits", *, root: str | os.PathLike | None = None, seed: int = 0,
                 val_size: int | float | None = None, train_limit: int | None = None,
                 test_limit: int | None = None, kwargs: dict | None = None, workers: int = 0) -> DataSplits:
    """Load one of ``DATASETS``, an ``imagefolder`` or a ``package.module:factory`` dataset by name.

    Args:
        name: Dataset name.
        root: Data directory; required for ``mnist``, ``cifar10`` and ``imagefolder``, defaults to
            ``DEFAULT_FASHION_MNIST_DIR`` for ``fashion-mnist``, not accepted for ``digits``; passed to a
            factory as ``data_dir``.
        seed: Seed of every split and subset.
        val_size: Validation size carved from the training set: a count (int) or a fraction in (0, 1).
        train_limit: Keep at most this many training images (stratified, after carving val).
        test_limit: Keep at most this many test images (stratified).
        kwargs: Settings of ``imagefolder`` or keyword arguments of a factory (:mod:`amc.userdata`); the
            built-in datasets take none.
        workers: DataLoader worker processes that read a streamed (user) dataset.

    Raises:
        ConfigError: Unknown name or invalid arguments.
        DataError: Missing or malformed files, or a factory that cannot be used.
    """
    kwargs = dict(kwargs or {})
    if name == "imagefolder" or ":" in name:
        from amc.userdata import load_factory, load_imagefolder

        common = {"seed": seed, "val_size": val_size, "train_limit": train_limit, "test_limit": test_limit,
                  "workers": workers}
        if name == "imagefolder":
            return load_imagefolder(root, settings=kwargs, **common)
        return load_factory(name, root=root, kwargs=kwargs, **common)
    if kwargs:
        raise ConfigError(f"dataset {name!r} takes no keyword arguments (got {sorted(kwargs)}); drop "
                          "--dataset-kwargs")
    limits = {"seed": seed, "val_size": val_size, "train_limit": train_limit, "test_limit": test_limit}
    if name == "digits":
        if root is not None:
            raise ConfigError(f"root={str(root)!r} is not used by 'digits' (bundled with sklearn); "
                              "drop the data directory.")
        return load_digits(**limits)
    if name in ("fashion-mnist", "mnist"):
        return load_idx(root, name=name, **limits)
    if name == "cifar10":
        return load_cifar10(root, **limits)
    raise ConfigError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, imagefolder (with "
                      "--data-dir) or package.module:factory for your own.")


def load_digits(*, seed: int = 0, val_size: int | float | None = None, train_limit: int | None = None,
                test_limit: int | None = None) -> DataSplits:
    """Load sklearn's 8x8 digits (1797 images): 20% test, then ``val_size`` (default 0.15) of the rest."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    rest, test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=seed, stratify=y)
    return _build("digits", x[rest], y[rest], x[test], y[test], num_classes=10, seed=seed,
                  val_size=0.15 if val_size is None else val_size, train_limit=train_limit,
                  test_limit=test_limit, per_channel=False)


def load_idx(root: str | os.PathLike | None, *, name: str = "fashion-mnist", seed: int = 0,
             val_size: int | float | None = None, train_limit: int | None = None,
             test_limit: int | None = None) -> DataSplits:
    """Load MNIST-style IDX files (raw or ``.gz``) from ``root``; images are scaled /255.

    ``root`` defaults to ``DEFAULT_FASHION_MNIST_DIR`` for ``fashion-mnist`` and is required otherwise.
    """
    if root is None:
        if name != "fashion-mnist":
            raise ConfigError(f"Dataset {name!r} has no default directory; pass root (--data-dir) "
                              "pointing at its IDX files.")
        root = DEFAULT_FASHION_MNIST_DIR
    root = Path(root)
    if not root.is_dir():
        fix = ("Install it with `apt-get install -y dataset-fashion-mnist` or pass"
               if name == "fashion-mnist" else "Pass")
        raise DataError(f"{name} directory {str(root)!r} does not exist. {fix} --data-dir pointing at "
                        "a folder with the four IDX files.")
    paths = {base: next((p for p in (root / base, root / f"{base}.gz") if p.is_file()), None)
             for base in _IDX_FILES}
    missing = [base for base, p in paths.items() if p is None]
    if missing:
        raise DataError(f"{name} directory {str(root)!r} lacks {', '.join(missing)} (raw or .gz).")
    arrays = []
    for images, labels in ((paths[_IDX_FILES[0]], paths[_IDX_FILES[1]]),
                           (paths[_IDX_FILES[2]], paths[_IDX_FILES[3]])):
        x, y = read_idx(images), read_idx(labels)
        if x.ndim != 3:
            raise DataError(f"{images} holds an array of shape {x.shape}; expected (N, H, W) images.")
        if y.ndim != 1:
            raise DataError(f"{labels} holds an array of shape {y.shape}; expected (N,) labels.")
        if len(x) != len(y):
            raise DataError(f"{images} has {len(x)} images but {labels} has {len(y)} labels.")
        arrays += [(x.astype(np.float32) / 255.0)[:, None], y.astype(np.int64)]
    return _build(name, *arrays, num_classes=10, seed=seed,
                  val_size=5000 if val_size is None else val_size, train_limit=train_limit,
                  test_limit=test_limit, per_channel=False)


def load_cifar10(root: str | os.PathLike | None, *, seed: int = 0, val_size: int | float | None = None,
                 train_limit: int | None = None, test_limit: int | None = None) -> DataSplits:
    """Load CIFAR-10 python batches from ``root`` (the ``cifar-10-batches-py`` folder or its parent).

    Images are standardised per channel with the training split's mean and std.
    """
    if root is None:
        raise ConfigError("Dataset 'cifar10' has no default directory; pass root (--data-dir) pointing "
                          f"at {_CIFAR_DIR!r} or its parent.")
    root = Path(root)
    if (root / _CIFAR_DIR).is_dir():
        root = root / _CIFAR_DIR
    if not root.is_dir():
        raise DataError(f"cifar10 directory {str(root)!r} does not exist; pass --data-dir pointing at "
                        f"{_CIFAR_DIR!r} or its parent.")
    missing = [b for b in (*_CIFAR_BATCHES, "test_batch") if not (root / b).is_file()]
    if missing:
        raise DataError(f"cifar10 directory {str(root)!r} lacks {', '.join(missing)}.")
    parts = [_read_cifar_batch(root / b) for b in _CIFAR_BATCHES]
    x_test, y_test = _read_cifar_batch(root / "test_batch")
    x_train = np.concatenate([x for x, _ in parts])
    y_train = np.concatenate([y for _, y in parts])
    return _build("cifar10", x_train, y_train, x_test, y_test, num_classes=10, seed=seed,
                  val_size=5000 if val_size is None else val_size, train_limit=train_limit,
                  test_limit=test_limit, per_channel=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (raw, or gzip when the name ends in ``.gz``) into a native-endian array.

    Raises:
        DataError: The file is unreadable, has a bad magic number, or its size does not match its header.
    """
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"Cannot read IDX file {str(path)!r}: {e}. Replace the file.") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(f"{str(path)!r} is not an IDX file: bad magic number {raw[:4].hex() or 'empty'}.")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{str(path)!r} is truncated: header declares {ndim} dims but the file is "
                        f"{len(raw)} bytes.")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"{str(path)!r} is {kind}: shape {shape} needs {expected} bytes, file has "
                        f"{len(raw)}.")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays, so a tampered batch cannot run code."""

    _ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy._core.numeric", "_frombuffer"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> object:
        module = module.replace("numpy.core.", "numpy._core.")  # batches pickled by numpy < 2
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        x = np.asarray(batch[b"data"], dtype=np.uint8)
        y = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"Cannot read CIFAR-10 batch {str(path)!r} ({type(e).__name__}: {e}); expected "
                        "a pickled dict with b'data' and b'labels'. Replace the file.") from e
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.shape != (len(x),):
        raise DataError(f"CIFAR-10 batch {str(path)!r} has data {x.shape} and labels {y.shape}; "
                        "expected (N, 3072) and (N,).")
    return x.reshape(-1, 3, 32, 32), y  # (N, C, H, W)


def _build(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
           y_test: np.ndarray, *, num_classes: int, seed: int, val_size: int | float,
           train_limit: int | None, test_limit: int | None, per_channel: bool) -> DataSplits:
    """Carve val from train, apply limits (train_limit after the carve), standardise, wrap as tensors."""
    for split, y in (("train", y_train), ("test", y_test)):
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"{name} {split} labels span [{y.min()}, {y.max()}]; expected "
                            f"[0, {num_classes - 1}].")
    rest, val = _stratified_split(y_train, _count(val_size, len(y_train), "val_size"), seed, "val_size")
    train = _limit(rest, y_train, train_limit, seed, "train_limit")
    test = _limit(np.arange(len(y_test)), y_test, test_limit, seed, "test_limit")
    x_tr = x_train[train].astype(np.float32)
    axes = (0, 2, 3) if per_channel else None
    mean = x_tr.mean(axis=axes, keepdims=per_channel, dtype=np.float64)
    std = x_tr.std(axis=axes, keepdims=per_channel, dtype=np.float64)
    if np.any(std == 0):
        raise DataError(f"{name} training images are constant (std 0); check the data files.")

    def wrap(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        x = ((x.astype(np.float32) - mean) / std).astype(np.float32)
        return TensorDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)))

    splits = DataSplits(train=wrap(x_tr, y_train[train]), val=wrap(x_train[val], y_train[val]),
                        test=wrap(x_test[test], y_test[test]), num_classes=num_classes,
                        input_shape=tuple(x_train.shape[1:]), name=name)
    logger.info("Loaded %s: train=%d val=%d test=%d, input %s, seed %d", name, len(splits.train),
                len(splits.val), len(splits.test), splits.input_shape, seed)
    return splits


def _count(size: int | float, n: int, what: str) -> int:
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


def _stratified_split(y: np.ndarray, n_out: int, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of ``arange(len(y))`` into (kept, ``n_out`` held out)."""
    try:
        kept, out = train_test_split(np.arange(len(y)), test_size=n_out, random_state=seed, stratify=y)
    except ValueError as e:  # sklearn: a class too rare, or a part smaller than the class count
        raise ConfigError(f"{what}: cannot take a stratified {n_out} of {len(y)} images ({e}). Choose a "
                          "size that leaves at least one image of every class on both sides.") from e
    return np.sort(kept), np.sort(out)


def _limit(idx: np.ndarray, y: np.ndarray, limit: int | None, seed: int, what: str) -> np.ndarray:
    """Keep a seeded stratified subset of at most ``limit`` of ``idx``; ``None`` or a big limit keeps all."""
    if limit is None:
        return idx
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ConfigError(f"{what}={limit!r} must be a positive int or None.")
    if limit >= len(idx):
        return idx
    _, kept = _stratified_split(y[idx], limit, seed, what)
    return idx[kept]
