"""The names of the built-in datasets, free of heavy imports.

The command lines offer them as choices, so a bad ``--dataset`` fails at once, before torch is imported.
:func:`amc.data.datasets.load_dataset` loads them (and also ``imagefolder`` and ``package.module:factory``).
"""

from __future__ import annotations

DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10")

__all__ = ["DATASETS"]
