"""Readers of option values: text in, a checked value out, or an :class:`OptionError` with a one-line reason.

One reader per rule, shared by every edge that takes settings: the command lines (:mod:`search.cli`, through
:func:`search.launch.argparse_type`), a ``--config`` TOML file and the service's JSON bodies (both through
:class:`search.options.SearchOptions`). Every reader takes the value's text, as a command line carries it, so
that each edge refuses a bad value with the same reason word for word. Kept free of heavy imports: a bad
argument fails at once, before torch is imported.

The names a choice offers come from one small function each (:func:`strategy_names`, ...): the one place
to switch to a registry.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from amc.cost.names import RESOURCES
from amc.graph.widths import GRANULARITIES

SAMPLERS = ("tpe", "cmaes", "random", "nsga2")  # search.strategies.optuna_search.SAMPLERS, without Optuna
PRUNERS = ("halving", "hyperband")  # what search.ladder.make_pruner builds (tests check they agree)
LM_DATASETS = ("code",)  # amc.data.lm_tokens.LMData.name: the standard library's code corpus (language models)

Reader = Callable[[str], Any]


class OptionError(Exception):
    """A value an option cannot take; the message is the reason (``must be ..., got '0'``)."""


# -- names offered as choices ------------------------------------------------------------------------------

def strategy_names() -> tuple[str, ...]:
    """The search strategies (``--strategy``): the registry of :mod:`search.strategies`."""
    from search.strategies import names

    return names()


def sampler_names() -> tuple[str, ...]:
    """Optuna's samplers (``--sampler``)."""
    return SAMPLERS


def pruner_names() -> tuple[str, ...]:
    """Optuna's pruners of a ladder (``--pruner``)."""
    return PRUNERS


def resource_names() -> tuple[str, ...]:
    """The constrained resources (``--resource``)."""
    return RESOURCES


def granularity_names() -> tuple[str, ...]:
    """Structured or unstructured pruning (``--granularity``)."""
    return GRANULARITIES


def criterion_names() -> tuple[str, ...]:
    """The pruning criteria (``--criterion``): the registry of :mod:`amc.pruning.criteria`, then a language
    model's sparsity criteria (:data:`amc.sparsity.criteria.CRITERIA`)."""
    from amc.pruning.criteria import criterion_names as names
    from amc.sparsity.criteria import CRITERIA

    return names() + tuple(c for c in CRITERIA if c not in names())


def per_names() -> tuple[str, ...]:
    """A language model's sparsity decisions (``--per``): one per transformer block or per linear layer."""
    from amc.sparsity.layers import PER

    return tuple(PER)


def reward_names() -> tuple[str, ...]:
    """The episode rewards (``--reward``), sorted."""
    from envs.rewards import REWARDS

    return tuple(sorted(REWARDS))


def dataset_names() -> tuple[str, ...]:
    """The built-in datasets, then the language models' (``--dataset`` also takes ``imagefolder`` and
    ``package.module:factory``)."""
    from amc.data.names import DATASETS

    return DATASETS + LM_DATASETS


def canonical_score(text: str) -> str:
    """A candidate score's canonical spelling (``bn``, ``reconstruct``, ``finetune:K[+kd]``).

    Raises:
        amc.errors.ConfigError: An unknown score; the message lists the choices.
    """
    from amc.evaluation.scores import check_score  # the registry of scores

    return check_score(text)


# -- readers -----------------------------------------------------------------------------------------------

def text(value: str) -> str:
    """Any text (a path, a URL, a model name)."""
    return value


def integer(value: str) -> int:
    """An integer (argparse's own wording when it is not one)."""
    try:
        return int(value)
    except ValueError:
        raise OptionError(f"invalid int value: {value!r}") from None


def number(value: str) -> float:
    """A number (argparse's own wording when it is not one)."""
    try:
        return float(value)
    except ValueError:
        raise OptionError(f"invalid float value: {value!r}") from None


def one_of(names: Callable[[], tuple[str, ...]]) -> Reader:
    """One of ``names()`` (argparse's own wording for an invalid choice)."""
    def read(value: str) -> str:
        choices = names()
        if value not in choices:
            raise OptionError(f"invalid choice: {value!r} (choose from {', '.join(map(repr, choices))})")
        return value
    return read


def int_at_least(low: int) -> Reader:
    """An integer >= ``low``."""
    def read(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < low:
            raise OptionError(f"must be an integer >= {low}, got {value!r}")
        return number
    return read


def number_in(low: float, high: float, *, low_closed: bool = False, high_closed: bool = True,
              meaning: str = "") -> Reader:
    """A finite number in the interval from ``low`` to ``high`` (``meaning`` says what it is)."""
    interval = f"{'[' if low_closed else '('}{low:g}, {high:g}{']' if high_closed else ')'}"

    def read(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        above = number >= low if low_closed else number > low
        below = number <= high if high_closed else number < high
        if math.isnan(number) or math.isinf(number) or not (above and below):
            raise OptionError(f"must be a number in {interval}{meaning}, got {value!r}")
        return number
    return read


def comma_list(item: Reader) -> Reader:
    """A comma-separated, non-empty list of ``item`` values, as a tuple."""
    def read(value: str) -> tuple:
        parts = [p.strip() for p in value.split(",")]
        if not all(parts):
            raise OptionError(f"must be a comma-separated list such as 0.3,0.5, got {value!r}")
        values = []
        for part in parts:
            try:
                values.append(item(part))
            except OptionError as exc:
                raise OptionError(f"{exc}{f' (in {value!r})' if len(parts) > 1 else ''}") from None
        return tuple(values)
    return read


def lm_score_names() -> tuple[str, ...]:
    """A language model's candidate scores (:data:`amc.evaluation.lm_evaluator.SCORES`)."""
    from amc.evaluation.lm_evaluator import SCORES

    return SCORES


def score_name(value: str) -> str:
    """A candidate score (:mod:`amc.evaluation.scores`), in its canonical spelling, or a language model's
    (:func:`lm_score_names`)."""
    from amc.errors import ConfigError

    if value in lm_score_names():
        return value
    try:
        return canonical_score(value)
    except ConfigError as exc:
        raise OptionError(str(exc).replace(f"unknown score {value!r}: ", "") + f", got {value!r}") from None


SELECT_NONE = "none"  # --select none: no deploy rung


def select_recipe(value: str) -> str:
    """The deploy rung's recipe: ``finetune:EPOCHS`` (EPOCHS >= 1 epochs of fine-tuning), or ``none``."""
    match = re.fullmatch(r"finetune:(\d+)", value.strip())
    if value.strip() == SELECT_NONE:
        return SELECT_NONE
    if match is None or int(match.group(1)) < 1:
        raise OptionError(f"must be finetune:EPOCHS (EPOCHS >= 1 epochs of fine-tuning each finalist, e.g. "
                          f"finetune:1) or none, got {value!r}")
    return f"finetune:{int(match.group(1))}"


def existing_file(hint: str) -> Reader:
    """The path of an existing file (``hint`` says which file to pass)."""
    def read(value: str) -> str:
        from pathlib import Path

        if not Path(value).is_file():
            raise OptionError(f"no file {value!r}: {hint}")
        return value
    return read


def dataset_name(value: str) -> str:
    """A built-in dataset, ``imagefolder`` or ``package.module:factory``."""
    names = dataset_names()
    if value in names or value == "imagefolder" or re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
        return value
    raise OptionError(f"must be one of {', '.join(names)}, imagefolder (with --data-dir) or "
                      f"package.module:factory for your own, got {value!r}")


def json_object(value: str) -> dict:
    """A JSON object of keyword arguments, e.g. ``'{"size": 64}'``."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise OptionError(f"must be a JSON object such as '{{\"size\": 64}}', got {value!r} ({exc.msg})") from None
    if not isinstance(parsed, dict):
        raise OptionError(f"must be a JSON object such as '{{\"size\": 64}}', got {value!r}")
    return parsed


def device_name(value: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` (whether this machine has it is checked later)."""
    from amc.device import check_device_name
    from amc.errors import ConfigError

    try:
        return check_device_name(value)
    except ConfigError:
        raise OptionError(f"must be cpu, cuda or cuda:N, got {value!r}") from None
