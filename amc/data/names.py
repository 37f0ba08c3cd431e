"""The names of the built-in datasets, free of heavy imports.

The command lines offer them as choices, so a bad ``--dataset`` fails at once, before torch is imported.
:func:`amc.data.datasets.load_dataset` loads them (and also ``imagefolder``, the prefixed datasets of
:data:`PREFIXES` and ``package.module:factory``).
"""

from __future__ import annotations

DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10")

# ``prefix:REF`` datasets read from the user's files, with how REF is written (a colon name with another
# prefix is a ``package.module:factory``)
PREFIXES = {"text": "text:FILE (a .jsonl or .csv file with text and label columns, for hf: text models)"}

__all__ = ["DATASETS", "PREFIXES"]
