"""A user's own model and data, as the tests write them: a factory package and a folder of PNGs.

The package is what the README's "Your own model and data" section tells a user to write: sklearn's
digits in a custom ``Dataset`` class (returned by a dataset factory) and a small network (a model
factory). The image folder holds the same digits as 8x8 grayscale PNGs, one folder per class.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import numpy as np

PACKAGE = "mydata"

FACTORIES = textwrap.dedent('''
    """Digits in a custom Dataset, and a small network: what a user writes for --dataset / --model."""

    import torch
    from sklearn.datasets import load_digits
    from torch import nn
    from torch.utils.data import Dataset


    class Digits(Dataset):
        """8x8 digits as (float image (1, 8, 8), int label); no ``targets``: the tool reads the labels once."""

        def __init__(self, images, labels):
            self.images, self._labels = images, labels

        def __len__(self):
            return len(self._labels)

        def __getitem__(self, i):
            image = torch.from_numpy(self.images[i]).float()[None] / 16.0
            return (image - 0.3) / 0.37, int(self._labels[i])


    class LabelledDigits(Digits):
        """The same, with a torchvision-style ``targets`` list (the labels are known without reading images)."""

        def __init__(self, images, labels):
            super().__init__(images, labels)
            self.targets = [int(y) for y in labels]


    def digit_splits(seed=0, with_val=False, labelled=False):
        """(train, test) or (train, val, test): the first 80% of the digits are train, the rest test."""
        bunch = load_digits()
        cls = LabelledDigits if labelled else Digits
        n = len(bunch.target)
        cut = int(0.8 * n)
        train = cls(bunch.images[:cut], bunch.target[:cut])
        test = cls(bunch.images[cut:], bunch.target[cut:])
        if with_val:
            return cls(bunch.images[:cut - 200], bunch.target[:cut - 200]), \\
                cls(bunch.images[cut - 200:cut], bunch.target[cut - 200:cut]), test
        return train, test


    def small_net(in_channels=1, num_classes=10, width=8):
        """Two conv-BN-ReLU blocks and a linear classifier."""
        return nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
        )
''')


def forget_package() -> None:
    """Drops ``mydata`` (and its modules) from ``sys.modules``: each test module writes its own copy."""
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def write_user_package(root: Path) -> Path:
    """Writes ``root/mydata/factories.py`` (import it with ``root`` on ``sys.path`` / ``PYTHONPATH``)."""
    package = root / PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "factories.py").write_text(FACTORIES)
    return root


def write_digit_pngs(root: Path, *, test_folder: bool = True, limit: int | None = None) -> Path:
    """sklearn's digits as 8x8 grayscale PNGs in ``root/train/<digit>/`` (and every 5th in ``root/test/``)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for i, (image, label) in enumerate(zip(bunch.images, bunch.target)):
        if limit is not None and i >= limit:
            break
        split = "test" if test_folder and i % 5 == 0 else "train"
        folder = root / split / f"digit-{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(image * 16, 0, 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root
