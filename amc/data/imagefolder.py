"""A user's folder of images: ``--dataset imagefolder --data-dir D``, streamed (:mod:`amc.data.streaming`).

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
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from amc.data.splits import DataSplits, default_val_size, limited, split_count, stratified_split
from amc.errors import ConfigError, DataError
from amc.data.streaming import StreamedSplit, batches, one_line

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGEFOLDER_SETTINGS = ("size", "channels", "mean", "std", "test_size")
STAT_IMAGES = 1000  # training images the default mean and std are estimated on
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")

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
        rest, test_pool = stratified_split(labels, split_count(opts["test_size"], len(labels), "test_size"), seed, "test_size")
        test_base = train_base
    if "val" in bases:
        if val_size is not None:
            raise ConfigError(f"--val-size {val_size!r} carves validation images from train, but {str(root / 'val')!r} "
                              "is the validation split; drop --val-size or the folder")
        val_base, val_idx = bases["val"], np.arange(len(bases["val"]))
    else:
        n_val = split_count(default_val_size(len(rest)) if val_size is None else val_size, len(rest), "val_size")
        kept, carved = stratified_split(labels[rest], n_val, seed, "val_size")
        val_base, val_idx, rest = train_base, rest[carved], rest[kept]
    train_idx = limited(rest, labels, train_limit, seed, "train_limit")
    test_idx = limited(test_pool, test_base.targets, test_limit, seed, "test_limit")
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
