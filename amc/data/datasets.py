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
(:mod:`amc.data.factory`, :mod:`amc.data.imagefolder`): ``imagefolder`` (one folder of PNG/JPEG files per class) and
``package.module:factory`` (a function returning ``torch.utils.data.Dataset`` objects); their splits
are :class:`~amc.data.streaming.StreamedSplit` views read through ``DataLoader``s.
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from amc.data.names import DATASETS
from amc.data.splits import DataSplits, limited, split_count, stratified_split
from amc.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


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
        kwargs: Settings of ``imagefolder`` or keyword arguments of a factory (:mod:`amc.data.factory`, :mod:`amc.data.imagefolder`); the
            built-in datasets take none.
        workers: DataLoader worker processes that read a streamed (user) dataset.

    Raises:
        ConfigError: Unknown name or invalid arguments.
        DataError: Missing or malformed files, or a factory that cannot be used.
    """
    kwargs = dict(kwargs or {})
    if name == "imagefolder" or ":" in name:
        from amc.data.factory import load_factory
        from amc.data.imagefolder import load_imagefolder

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
    rest, val = stratified_split(y_train, split_count(val_size, len(y_train), "val_size"), seed, "val_size")
    train = limited(rest, y_train, train_limit, seed, "train_limit")
    test = limited(np.arange(len(y_test)), y_test, test_limit, seed, "test_limit")
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
