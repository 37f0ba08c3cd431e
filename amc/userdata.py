"""A user's own data: a dataset factory (``--dataset package.module:factory``) or a folder of images.

Both are streamed (:mod:`amc.streaming`): nothing is concatenated into one tensor. The evaluator keeps
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

**Image folders.** ``--dataset imagefolder --data-dir D`` reads ``D/train/<class>/`` (one folder per
class, named as you like; classes are numbered in sorted order), ``D/test/<class>/`` when it exists
(else ``test_size``, default 20%, is carved from train) and ``D/val/<class>/`` when it exists (else
validation is carved from train as above). Files ending in ``.png``, ``.jpg`` or ``.jpeg`` (any case,
also in subfolders) are images; other files are ignored. Each image is decoded with Pillow,
converted to grayscale (``channels`` 1) or RGB (3; default: 1 when the first training image is
grayscale, else 3), scaled so that it covers ``size`` x ``size`` pixels (default 32; ``[h, w]`` for
other shapes; aspect ratio kept, bilinear) and centre-cropped to it, scaled to [0, 1] and standardised
per channel with ``mean`` and ``std`` (default: estimated on up to 1,000 seeded training images).
These settings are ``--dataset-kwargs``, e.g. ``'{"size": 64, "channels": 3}'``. Every file's header is
checked before anything runs, so an unreadable file is reported at once, by name.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from amc.data import DataSplits, _count, _limit, _stratified_split
from amc.errors import AmcError, ConfigError, DataError
from amc.streaming import StreamedSplit, batches, labels_of, one_line

log = logging.getLogger(__name__)

MAX_DEFAULT_VAL = 5000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGEFOLDER_SETTINGS = ("size", "channels", "mean", "std", "test_size")
STAT_IMAGES = 1000  # training images the default mean and std are estimated on
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def default_val_size(n_train: int) -> int:
    """Validation images carved from ``n_train`` training images when ``val_size`` is not given."""
    return max(1, min(MAX_DEFAULT_VAL, round(0.1 * n_train)))


# ---------------------------------------------------------------------------------------------- factories

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


def _seeded_subset(idx: np.ndarray, labels: np.ndarray | None, limit: int | None, seed: int, what: str) -> np.ndarray:
    """``_limit`` (stratified) when labels are known, else a seeded random subset of at most ``limit``."""
    if labels is not None:
        return _limit(idx, labels, limit, seed, what)
    if limit is None:
        return idx
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ConfigError(f"{what}={limit!r} must be a positive int or None.")
    if limit >= len(idx):
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, size=limit, replace=False))


def load_factory(spec: str, *, root: str | os.PathLike | None = None, kwargs: dict | None = None, seed: int = 0,
                 val_size: int | float | None = None, train_limit: int | None = None,
                 test_limit: int | None = None, workers: int = 0) -> DataSplits:
    """The splits of ``--dataset package.module:factory`` (see the module docstring).

    Raises:
        DataError: The factory cannot be imported or called, returns something else than datasets, or
            its items are not (float image, int label) pairs.
        ConfigError: Arguments it does not take, or ``val_size`` with a factory that returns a val split.
    """
    kwargs = dict(kwargs or {})
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
        n_val = _count(default_val_size(len(labels)) if val_size is None else val_size, len(labels), "val_size")
        rest, val_idx = _stratified_split(labels, n_val, seed, "val_size")
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
    train_idx = _limit(rest, labels, train_limit, seed, "train_limit")
    test_labels = _known_labels(test)
    if test_labels is not None:
        _check_labels(test_labels, num_classes, f"the test split of --dataset {spec!r}")
    test_idx = _seeded_subset(np.arange(len(test)), test_labels, test_limit, seed, "test_limit")
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


# ---------------------------------------------------------------------------------------------- image folders

class ImageFiles(Dataset):
    """Image files decoded with Pillow: converted to ``mode``, fitted to ``size`` (h, w), scaled to [0, 1] and
    standardised with ``mean`` and ``std`` (per channel; None: not standardised)."""

    def __init__(self, files: list[str], labels: np.ndarray, *, size: tuple[int, int], mode: str,
                 mean: Tensor | None = None, std: Tensor | None = None) -> None:
        self.files, self.targets = files, labels
        self.size, self.mode, self.mean, self.std = size, mode, mean, std

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        path = self.files[i]
        try:
            with Image.open(path) as image:
                array = np.asarray(_fit(image.convert(self.mode), self.size), dtype=np.uint8)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {path!r} ({one_line(exc)}); replace or delete the file") from None
        x = torch.from_numpy(array.copy()).to(torch.float32).div_(255.0)
        x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)  # (C, H, W)
        if self.mean is not None:
            x = (x - self.mean[:, None, None]) / self.std[:, None, None]
        return x.contiguous(), int(self.targets[i])


def _fit(image, size: tuple[int, int]):
    """``image`` scaled (aspect kept, bilinear) to cover ``size`` = (h, w), then centre-cropped to it."""
    from PIL import Image

    h, w = size
    width, height = image.size
    if (height, width) == (h, w):
        return image
    scale = max(h / height, w / width)
    new_w, new_h = max(w, round(width * scale)), max(h, round(height * scale))
    image = image.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - w) // 2, (new_h - h) // 2
    return image.crop((left, top, left + w, top + h))


def _class_folders(folder: Path) -> list[Path]:
    return sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _scan(folder: Path, classes: list[str] | None, root: Path) -> tuple[list[str], list[str], np.ndarray, str]:
    """(classes, files, labels, manifest digest) of one split folder; ``classes`` None: this is train."""
    subdirs = _class_folders(folder)
    layout = (f"put one folder per class of PNG/JPEG images in {str(root / 'train')!r}/<class>/ (and optionally "
              "test/<class>/ and val/<class>/ beside it)")
    if classes is None:
        if not subdirs:
            raise DataError(f"{str(folder)!r} has no class subfolders; {layout}")
        if len(subdirs) < 2:
            raise DataError(f"{str(folder)!r} has one class subfolder ({subdirs[0].name!r}); a classifier needs at "
                            f"least two: {layout}")
        classes = [d.name for d in subdirs]
    else:
        if not subdirs:
            raise DataError(f"{str(folder)!r} has no class subfolders; {layout}")
        unknown = [d.name for d in subdirs if d.name not in classes]
        if unknown:
            raise DataError(f"{str(folder / unknown[0])!r} is not a class of {str(root / 'train')!r} (classes: "
                            f"{', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}); rename or remove it")
    files: list[str] = []
    labels: list[int] = []
    digest = hashlib.sha256()
    for d in subdirs:
        found = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise DataError(f"class folder {str(d)!r} has no .png, .jpg or .jpeg files; add images or remove the folder")
        label = classes.index(d.name)
        for p in found:
            files.append(str(p))
            labels.append(label)
            digest.update(f"{p.relative_to(folder)}|{label}|{p.stat().st_size}\n".encode())
    return classes, files, np.asarray(labels, dtype=np.int64), digest.hexdigest()


def _verify(files: list[str]) -> str:
    """Opens every file's header (fast: the pixels are not decoded); returns the first image's mode."""
    from PIL import Image, UnidentifiedImageError

    first = None
    for path in files:
        try:
            with Image.open(path) as image:
                first = first or image.mode
        except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {path!r} ({one_line(exc)}); replace or delete the file (every "
                            ".png/.jpg/.jpeg file under --data-dir must be a readable image)") from None
    return first or "RGB"


def _settings(settings: dict) -> dict:
    unknown = sorted(set(settings) - set(IMAGEFOLDER_SETTINGS))
    if unknown:
        raise ConfigError(f"imagefolder does not take {unknown}; its --dataset-kwargs are {', '.join(IMAGEFOLDER_SETTINGS)}")
    size = settings.get("size", 32)
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)):
        raise ConfigError(f"imagefolder size {settings.get('size')!r} must be a positive int or [height, width]")
    channels = settings.get("channels")
    if channels not in (None, 1, 3) or isinstance(channels, bool):
        raise ConfigError(f"imagefolder channels {channels!r} must be 1 (grayscale) or 3 (RGB)")
    stats = {}
    for key in ("mean", "std"):
        value = settings.get(key)
        if value is None:
            stats[key] = None
            continue
        values = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        if (not isinstance(values, (list, tuple)) or not values
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
                or (key == "std" and not all(v > 0 for v in values))):
            raise ConfigError(f"imagefolder {key} {value!r} must be a number or a list of numbers per channel"
                              + (" (all > 0)" if key == "std" else ""))
        stats[key] = [float(v) for v in values]
    if (stats["mean"] is None) != (stats["std"] is None):
        raise ConfigError("imagefolder mean and std go together: give both or neither")
    test_size = settings.get("test_size", 0.2)
    return {"size": tuple(size), "channels": channels, "test_size": test_size, **stats}


def _per_channel(values: list[float] | None, channels: int, key: str) -> Tensor | None:
    if values is None:
        return None
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ConfigError(f"imagefolder {key} has {len(values)} values for {channels} channel(s); give one per channel")
    return torch.tensor(values, dtype=torch.float32)


def _estimate_stats(base: ImageFiles, train_idx: np.ndarray, seed: int, workers: int) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of up to :data:`STAT_IMAGES` seeded training images, read in batches."""
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(train_idx, size=min(STAT_IMAGES, len(train_idx)), replace=False))
    split = StreamedSplit(base, sample, source="imagefolder", workers=workers)
    total = total_sq = None
    count = 0
    for x, _ in batches(split, 256):
        x = x.to(torch.float64)
        s, sq = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    if bool((std < 1e-6).any()):
        raise DataError("the imagefolder training images are constant (std 0 in a channel); check the images")
    return mean.to(torch.float32), std.to(torch.float32)


def load_imagefolder(root: str | os.PathLike | None, *, settings: dict | None = None, seed: int = 0,
                     val_size: int | float | None = None, train_limit: int | None = None,
                     test_limit: int | None = None, workers: int = 0) -> DataSplits:
    """The splits of ``--dataset imagefolder --data-dir root`` (see the module docstring for the layout).

    Raises:
        ConfigError: No ``root``, bad settings, or ``val_size`` beside a ``val/`` folder.
        DataError: A missing folder, no class subfolders, a class without images, an unreadable image.
    """
    if root is None:
        raise ConfigError("--dataset imagefolder needs --data-dir D: a folder with D/train/<class>/ image folders "
                          "(PNG or JPEG), and optionally D/test/<class>/")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--data-dir {str(root)!r} does not exist; point it at a folder with train/<class>/ image "
                        "folders")
    opts = _settings(dict(settings or {}))
    if not (root / "train").is_dir():
        raise DataError(f"--data-dir {str(root)!r} has no train/ folder; put one folder per class of PNG/JPEG images "
                        f"in {str(root / 'train')!r}/<class>/ (and optionally test/<class>/ beside it)")
    classes, files, labels, digest = _scan(root / "train", None, root)
    folders = {"train": (files, labels, digest)}
    for name in ("val", "test"):
        if (root / name).is_dir():
            _, f, y, d = _scan(root / name, classes, root)
            folders[name] = (f, y, d)
    mode = _verify([f for files_, _, _ in folders.values() for f in files_])
    channels = opts["channels"] or (1 if mode in _GRAY_MODES else 3)
    image_mode = "L" if channels == 1 else "RGB"
    mean, std = _per_channel(opts["mean"], channels, "mean"), _per_channel(opts["std"], channels, "std")
    bases = {name: ImageFiles(f, y, size=opts["size"], mode=image_mode, mean=mean, std=std)
             for name, (f, y, _) in folders.items()}
    train_base = bases["train"]
    rest = np.arange(len(labels))
    if "test" in bases:
        test_base, test_pool = bases["test"], np.arange(len(bases["test"]))
    else:
        rest, test_pool = _stratified_split(labels, _count(opts["test_size"], len(labels), "test_size"), seed, "test_size")
        test_base = train_base
    if "val" in bases:
        if val_size is not None:
            raise ConfigError(f"--val-size {val_size!r} carves validation images from train, but {str(root / 'val')!r} "
                              "is the validation split; drop --val-size or the folder")
        val_base, val_idx = bases["val"], np.arange(len(bases["val"]))
    else:
        n_val = _count(default_val_size(len(rest)) if val_size is None else val_size, len(rest), "val_size")
        kept, carved = _stratified_split(labels[rest], n_val, seed, "val_size")
        val_base, val_idx, rest = train_base, rest[carved], rest[kept]
    train_idx = _limit(rest, labels, train_limit, seed, "train_limit")
    test_idx = _limit(test_pool, test_base.targets, test_limit, seed, "test_limit")
    if mean is None:
        mean, std = _estimate_stats(train_base, train_idx, seed, workers)
        for base in bases.values():
            base.mean, base.std = mean, std

    def split(base: ImageFiles, idx: np.ndarray, name: str) -> StreamedSplit:
        return StreamedSplit(base, idx, source=f"imagefolder {str(root)!r} {name} split", labels=base.targets[idx],
                             workers=workers)

    spec = {"classes": classes, "files": {k: d for k, (_, _, d) in folders.items()}, "size": list(opts["size"]),
            "channels": channels, "mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std],
            "test_size": opts["test_size"] if "test" not in bases else None}
    splits = DataSplits(train=split(train_base, train_idx, "train"), val=split(val_base, val_idx, "val"),
                        test=split(test_base, test_idx, "test"), num_classes=len(classes),
                        input_shape=(channels, *opts["size"]), name="imagefolder", spec=json.dumps(spec, sort_keys=True))
    log.info("Loaded imagefolder %s: %d classes, train=%d val=%d test=%d, input %s, mean %s std %s, seed %d", root,
             len(classes), len(splits.train), len(splits.val), len(splits.test), splits.input_shape,
             [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std], seed)
    return splits


__all__ = ["IMAGEFOLDER_SETTINGS", "IMAGE_SUFFIXES", "ImageFiles", "default_val_size", "load_factory",
           "load_imagefolder"]
