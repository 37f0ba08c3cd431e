"""Shared command-line plumbing of the scripts (kept free of heavy imports: argument errors are instant).

The argparse types here are the readers of :mod:`search.values` (the rules the config file and the
service apply too), wrapped by :func:`search.launch.argparse_type`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from search import values
from search.launch import OneLineParser, argparse_type

__all__ = ["OneLineParser", "argparse_type", "comma_list", "dataset_name", "device_name", "existing_file",
           "int_at_least", "json_object", "number_in", "score_name"]

score_name = argparse_type(values.score_name)
dataset_name = argparse_type(values.dataset_name)
json_object = argparse_type(values.json_object)
device_name = argparse_type(values.device_name)


def int_at_least(low: int):
    """argparse type: an integer >= ``low``."""
    return argparse_type(values.int_at_least(low))


def number_in(low: float, high: float, *, low_closed: bool = False, high_closed: bool = True, meaning: str = ""):
    """argparse type: a finite number in the interval from ``low`` to ``high`` (``meaning`` says what it is)."""
    return argparse_type(values.number_in(low, high, low_closed=low_closed, high_closed=high_closed, meaning=meaning))


def existing_file(hint: str):
    """argparse type: the path of an existing file (``hint`` says which file to pass)."""
    return argparse_type(values.existing_file(hint))


def comma_list(item: Callable[[str], Any]):
    """argparse type: a comma-separated, non-empty list of ``item`` values (``item`` is another type here)."""
    read = getattr(item, "read", None)
    if read is None:  # a type of the caller's own, raising argparse.ArgumentTypeError
        def read(text: str) -> Any:
            try:
                return item(text)
            except argparse.ArgumentTypeError as exc:
                raise values.OptionError(str(exc)) from None
    return argparse_type(values.comma_list(read))
