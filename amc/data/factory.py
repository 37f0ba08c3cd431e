"""A user's dataset factory: ``--dataset package.module:factory``, streamed (:mod:`amc.data.streaming`).

Nothing is concatenated into one tensor. The evaluator keeps
only its validation subset and its BatchNorm-recalibration batches in memory; training and
fine-tuning read batches through ``DataLoader``s. Ray workers rebuild the same splits from the same
settings (the name, ``--data-dir``, ``--dataset-kwargs`` and the seed).

**Factories.** ``--dataset mypkg.data:make_splits`` imports ``mypkg.data`` and calls ``make_splits``
with the keyword arguments among ``data_dir`` (``--data-dir``, only when given) and ``seed`` that it
accepts, plus ``--dataset-kwargs``. It returns ``(train, test)``, ``(train, val, test)`` (``val`` may be
None) or a dict with those keys: any map-style ``torch.utils.data.Dataset`` whose items are ``(image,
label)``, the image a float tensor ``(C, H, W)`` (already normalised: it is used as it is), the label an
int. Without ``val``, ``--val-size`` images (default 10% of train, at most 5,000) are carved from
train, stratified by label as for the built-in datasets. Labels come from a ``targets`` attribute
(list, array or tensor, as torchvision's datasets have) when there is one, else from one pass over
train that reads every item; the class count from ``num_classes`` or ``classes`` attributes, else the
largest label + 1.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
from collections.abc import Mapping

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset, Subset

from amc.data.names import PREFIXES
from amc.data.splits import DataSplits, default_val_size, limited, split_count, stratified_split
from amc.errors import AmcError, ConfigError, DataError
from amc.data.streaming import StreamedSplit, labels_of, one_line

log = logging.getLogger(__name__)

def _resolve(spec: str):
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--dataset {spec!r}: name a factory as package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DataError(f"cannot import module {module_name!r} of --dataset {spec!r} ({one_line(exc)}); check "
                        "that it is on PYTHONPATH") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise DataError(f"importing module {module_name!r} of --dataset {spec!r} failed ({one_line(exc)}); fix "
                        "the module") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise DataError(f"{module_name!r} has no callable {attr!r} (--dataset {spec!r}); name a function that "
                        "returns (train, test) or (train, val, test) datasets")
    return factory


def _factory_args(factory, spec: str, root, seed: int, kwargs: dict) -> dict:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError) as exc:
        raise DataError(f"cannot inspect the dataset factory {spec!r} ({exc}); name a Python function") from None
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    wanted = {"seed": seed, **({"data_dir": str(root)} if root is not None else {}), **kwargs}
    args = {k: v for k, v in wanted.items() if takes_any or k in params}
    unused = sorted(set(kwargs) - set(args))
    if unused:
        raise ConfigError(f"the dataset factory {spec!r} does not accept {unused}; remove them from --dataset-kwargs")
    if root is not None and "data_dir" not in args:
        raise ConfigError(f"--data-dir {str(root)!r} is not used: the dataset factory {spec!r} has no data_dir "
                          "parameter; drop --data-dir or add the parameter")
    return args


def _is_dataset(obj: object) -> bool:
    return hasattr(obj, "__getitem__") and hasattr(obj, "__len__") and not isinstance(obj, (str, bytes, Mapping))


def _parts(result: object, spec: str) -> tuple[Dataset, Dataset | None, Dataset]:
    shape = ("return (train, test), (train, val, test) or a dict with those keys: torch.utils.data.Dataset "
             "objects (val may be None)")
    if isinstance(result, Mapping):
        unknown = sorted(set(map(str, result)) - {"train", "val", "test"})
        if unknown or "train" not in result or "test" not in result:
            raise DataError(f"the dataset factory {spec!r} returned a dict with keys {sorted(map(str, result))}; "
                            f"{shape}")
        parts = (result["train"], result.get("val"), result["test"])
    elif isinstance(result, (tuple, list)) and len(result) in (2, 3) and not _is_dataset_pair(result):
        parts = (result[0], None, result[1]) if len(result) == 2 else tuple(result)
    else:
        raise DataError(f"the dataset factory {spec!r} returned {_describe(result)}; {shape}")
    for name, part in zip(("train", "val", "test"), parts):
        if part is None and name == "val":
            continue
        if not _is_dataset(part):
            raise DataError(f"the dataset factory {spec!r} returned {_describe(part)} as its {name} split; {shape}")
        if len(part) == 0:
            raise DataError(f"the dataset factory {spec!r} returned an empty {name} split; give it images")
    return parts  # type: ignore[return-value]


def _is_dataset_pair(result) -> bool:
    """An (image, label) item returned by mistake instead of datasets."""
    return len(result) == 2 and isinstance(result[0], Tensor)


def _describe(obj: object) -> str:
    if isinstance(obj, (tuple, list)):
        return f"{_a(type(obj).__name__)} of {len(obj)} ({', '.join(type(o).__name__ for o in obj[:4])})"
    return _a(type(obj).__name__)


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _known_labels(ds: Dataset) -> np.ndarray | None:
    """Labels a dataset carries without reading its images: ``targets`` (torchvision), through ``Subset``s."""
    if isinstance(ds, Subset):
        base = _known_labels(ds.dataset)
        return None if base is None else base[np.asarray(ds.indices, dtype=np.int64)]
    targets = getattr(ds, "targets", None)
    if targets is None:
        return None
    try:
        labels = np.asarray(targets.numpy() if isinstance(targets, Tensor) else targets)
    except (TypeError, ValueError):
        return None
    if labels.shape != (len(ds),) or not np.issubdtype(labels.dtype, np.integer):
        return None
    return labels.astype(np.int64)


def _num_classes(ds: Dataset, labels: np.ndarray, spec: str) -> int:
    declared = getattr(ds, "num_classes", None)
    if not isinstance(declared, (int, np.integer)) or isinstance(declared, bool):
        classes = getattr(ds, "classes", None)
        declared = len(classes) if isinstance(classes, (list, tuple)) else None
    n = int(declared) if declared is not None else int(labels.max()) + 1
    if n < 2:
        raise DataError(f"the train split of --dataset {spec!r} has {n} class(es); a classifier needs at least two")
    return n


def _check_labels(labels: np.ndarray, num_classes: int, what: str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{what} has labels in [{labels.min()}, {labels.max()}]; labels must be class indices in "
                        f"[0, {num_classes - 1}]")


def load_factory(spec: str, *, root: str | os.PathLike | None = None, kwargs: dict | None = None, seed: int = 0,
                 val_size: int | float | None = None, train_limit: int | None = None,
                 test_limit: int | None = None, workers: int = 0) -> DataSplits:
    """The splits of ``--dataset package.module:factory`` (see the module docstring), or of a prefixed dataset
    (:data:`amc.data.names.PREFIXES`: ``text:FILE``, :mod:`amc.data.text`).

    Raises:
        DataError: The factory cannot be imported or called, returns something else than datasets, or
            its items are not (float image, int label) pairs.
        ConfigError: Arguments it does not take, or ``val_size`` with a factory that returns a val split.
    """
    kwargs = dict(kwargs or {})
    if spec.partition(":")[0] in PREFIXES:  # a prefixed dataset (``text:FILE``), not a factory
        from amc.data.text import load_text

        return load_text(spec, root=root, settings=kwargs, seed=seed, val_size=val_size, train_limit=train_limit,
                         test_limit=test_limit)
    factory = _resolve(spec)
    args = _factory_args(factory, spec, root, seed, kwargs)
    try:
        result = factory(**args)
    except AmcError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's function
        raise DataError(f"calling the dataset factory {spec!r} with {sorted(args)} failed ({one_line(exc)}); fix "
                        "the factory or its --dataset-kwargs") from None
    train, val, test = _parts(result, spec)
    source = f"--dataset {spec}"
    x, _ = StreamedSplit(train, source=f"{source} train split")[0]
    labels = _known_labels(train)
    if labels is None:
        log.info("%s: reading all %d training items once for their labels (a 'targets' attribute skips this)",
                 spec, len(train))
        labels = labels_of(StreamedSplit(train, source=f"{source} train split", workers=workers))
    num_classes = _num_classes(train, labels, spec)
    _check_labels(labels, num_classes, f"the train split of --dataset {spec!r}")
    if val is None:
        n_val = split_count(default_val_size(len(labels)) if val_size is None else val_size, len(labels), "val_size")
        rest, val_idx = stratified_split(labels, n_val, seed, "val_size")
        val_split = StreamedSplit(train, val_idx, source=f"{source} val split (carved from train)",
                                  labels=labels[val_idx], workers=workers)
    else:
        if val_size is not None:
            raise ConfigError(f"--val-size {val_size!r} carves validation images from train, but the dataset factory "
                              f"{spec!r} returns its own val split; drop --val-size")
        rest = np.arange(len(labels))
        val_labels = _known_labels(val)
        if val_labels is not None:
            _check_labels(val_labels, num_classes, f"the val split of --dataset {spec!r}")
        val_split = StreamedSplit(val, source=f"{source} val split", labels=val_labels, workers=workers)
    train_idx = limited(rest, labels, train_limit, seed, "train_limit")
    test_labels = _known_labels(test)
    if test_labels is not None:
        _check_labels(test_labels, num_classes, f"the test split of --dataset {spec!r}")
    test_idx = limited(np.arange(len(test)), test_labels, test_limit, seed, "test_limit")
    splits = DataSplits(
        train=StreamedSplit(train, train_idx, source=f"{source} train split", labels=labels[train_idx], workers=workers),
        val=val_split,
        test=StreamedSplit(test, test_idx, source=f"{source} test split",
                           labels=None if test_labels is None else test_labels[test_idx], workers=workers),
        num_classes=num_classes, input_shape=tuple(x.shape), name=spec,
        spec=json.dumps({"factory": spec, "kwargs": kwargs, "own_val": val is not None}, sort_keys=True, default=str),
    )
    log.info("Loaded %s: train=%d val=%d test=%d, input %s, %d classes, seed %d", spec, len(splits.train),
             len(splits.val), len(splits.test), splits.input_shape, num_classes, seed)
    return splits
