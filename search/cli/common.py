"""Shared command-line plumbing of the scripts (kept free of heavy imports: argument errors are instant)."""

from __future__ import annotations

import argparse
import math


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument on one line (exit code 2), without the usage block."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


def int_at_least(low: int):
    """argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value
    return parse


def number_in(low: float, high: float, *, low_closed: bool = False, high_closed: bool = True, meaning: str = ""):
    """argparse type: a finite number in the interval from ``low`` to ``high`` (``meaning`` says what it is)."""
    interval = f"{'[' if low_closed else '('}{low:g}, {high:g}{']' if high_closed else ')'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        above = value >= low if low_closed else value > low
        below = value <= high if high_closed else value < high
        if math.isnan(value) or math.isinf(value) or not (above and below):
            raise argparse.ArgumentTypeError(f"must be a number in {interval}{meaning}, got {text!r}")
        return value
    return parse


def comma_list(item):
    """argparse type: a comma-separated, non-empty list of ``item`` values (``item`` is another type here)."""
    def parse(text: str) -> tuple:
        parts = [p.strip() for p in text.split(",")]
        if not all(parts):
            raise argparse.ArgumentTypeError(f"must be a comma-separated list such as 0.3,0.5, got {text!r}")
        values = []
        for part in parts:
            try:
                values.append(item(part))
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentTypeError(f"{exc}{f' (in {text!r})' if len(parts) > 1 else ''}") from None
        return tuple(values)
    return parse


def score_name(text: str) -> str:
    """argparse type: a candidate score (:mod:`amc.evaluation.scores`), in its canonical spelling."""
    from amc.errors import ConfigError
    from amc.choices import check_score

    try:
        return check_score(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace(f"unknown score {text!r}: ", "")
                                         + f", got {text!r}") from None


def existing_file(hint: str):
    """argparse type: the path of an existing file (``hint`` says which file to pass)."""
    def parse(text: str) -> str:
        from pathlib import Path

        if not Path(text).is_file():
            raise argparse.ArgumentTypeError(f"no file {text!r}: {hint}")
        return text
    return parse


def dataset_name(text: str) -> str:
    """argparse type: a built-in dataset, ``imagefolder`` or ``package.module:factory``."""
    import re

    from amc.choices import DATASETS

    if text in DATASETS or text == "imagefolder" or re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", text):
        return text
    raise argparse.ArgumentTypeError(f"must be one of {', '.join(DATASETS)}, imagefolder (with --data-dir) or "
                                     f"package.module:factory for your own, got {text!r}")


def json_object(text: str) -> dict:
    """argparse type: a JSON object of keyword arguments, e.g. ``'{"size": 64}'``."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"size\": 64}}', got {text!r} "
                                         f"({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"size\": 64}}', got {text!r}")
    return value


def device_name(text: str) -> str:
    """argparse type: ``cpu``, ``cuda`` or ``cuda:N`` (whether this machine has it is checked later)."""
    from amc.device import check_device_name
    from amc.errors import ConfigError

    try:
        return check_device_name(text)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}") from None
