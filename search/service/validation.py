"""A submitted search's settings, checked by the same option schema as ``scripts/search.py``'s options.

The request body is a JSON object whose keys are ``scripts/search.py``'s long option names
(``budget``, ``strategy``, ``no_export``, ...; dashes or underscores). Each value must have its option's
JSON kind (:attr:`search.options.Option.kind`); then the values go through
:class:`search.options.SearchOptions` (the readers that check ``--budget 0`` at the command line) and
:meth:`~search.options.SearchOptions.to_config` (the frozen configs' checks), so a setting the CLI rejects
is rejected here with the same reason. The service adds bounds of its own (:data:`LIMITS`) and owns the run
folder, the Optuna storage and the console output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from amc.errors import AmcError
from amc.evaluation.scores import Finetune, parse_score
from search.options import Option, SearchOptions, as_text, first_error, options
from search.service.names import NamePolicy, SettingsError, check_names

# Settings the service sets itself: where the run goes, its Optuna storage, the console, the cluster.
SERVICE_OWNED = {
    "out": "the service chooses the run folder (runs/<id> in its state folder)",
    "resume": "use POST /v1/searches/{id}/resume",
    "storage": "the service keeps each study in its own database",
    "quiet": "a service search has no console",
    "config": "send the settings themselves",
    "ray_address": "the service decides where searches run",
    "warm_start": "warm starts read policy files on the server; start from an earlier run with scripts/search.py "
                  "--warm-start",
}
# Service-only upper bounds (a request must not tie up the machine for days).
LIMITS = {"evaluations": 10_000, "warmup": 10_000, "epochs": 1_000, "ladder_top_k": 1_000, "latency_batch": 4_096,
          "round_to": 1_024, "val_size": 1_000_000, "train_limit": 10_000_000, "val_limit": 1_000_000,
          "threads": 256, "workers": 1_024, "threads_per_worker": 256, "select_top_k": 1_000,
          "select_samples": 10_000_000, "warm_start_top_k": 1_000}
MAX_TEXT = 1_000  # characters of a string setting
MAX_FINETUNE_STEPS = 10_000  # K of a finetune:K score (per candidate)


@dataclass(frozen=True)
class Settings:
    """Checked settings.

    Attributes:
        given: The request's settings, keys in underscore form, None values dropped.
        options: Every option's value (defaults filled in), as ``scripts/search.py`` resolves them.
    """

    given: dict[str, Any]
    options: dict[str, Any]

    @property
    def evaluations(self) -> int:
        """Candidates the finished search's ``history.csv`` has: the strategy's own evaluations (the one-policy
        strategies stop at one) after the two baselines (uniform, Torch-Pruning global; :mod:`search.starts`),
        unless they are off or the strategy is a baseline itself. (A model Torch-Pruning cannot prune gets
        no tp-global baseline: its progress reaches one candidate short, then 1.0 when it succeeds.)"""
        from search.strategies import get

        strategy = get(self.options["strategy"])
        own = 1 if strategy.single_policy else self.options["evaluations"]
        baselines = 2 if strategy.takes_baselines and not self.options.get("no_baselines") else 0
        return own + baselines


def settable_options() -> dict[str, Option]:
    """``scripts/search.py``'s options a request may set, by name (underscore form)."""
    return {name: option for name, option in options().items() if name not in SERVICE_OWNED}


def option_argv(key: str, value: Any) -> list[str]:
    """The command-line words of one setting (``--key=value`` keeps a value that starts with a dash a value)."""
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else []
    return [f"{flag}={as_text(value)}"]


def settings_argv(given: dict[str, Any]) -> list[str]:
    """The ``scripts/search.py`` arguments of checked settings (without the service's own)."""
    return [word for key, value in given.items() for word in option_argv(key, value)]


def lowest(option: Option) -> int:
    """The smallest value of an integer setting this service takes: 0, or 1 where the option refuses 0."""
    try:
        option.read("0")
    except Exception:  # noqa: BLE001 - the reader's OptionError: 0 is refused
        return 1
    return 0


def bounds(max_evaluations: int = LIMITS["evaluations"]) -> dict[str, tuple[int, int]]:
    """Setting -> the inclusive range this service takes (what its 422 and its OpenAPI document say)."""
    settable = settable_options()
    return {key: (lowest(settable[key]), high) for key, high in {**LIMITS, "evaluations": max_evaluations}.items()
            if key in settable}


def validate_settings(values: dict[str, Any], *, max_evaluations: int = LIMITS["evaluations"],
                      python: str | None = None, workdir: str = ".", names: NamePolicy = NamePolicy()) -> Settings:
    """Checks a request's settings as ``scripts/search.py`` checks its options, and resolves the names they
    give (models, datasets, factories: :func:`search.service.names.check_names`) as the run will.

    Args:
        values: The request body.
        max_evaluations: This service's bound on ``evaluations``.
        python, workdir: The search processes' interpreter and working folder (a factory is imported there;
            None: this interpreter).
        names: The models folder and factory patterns the operator accepts (default: built-ins and ``timm:``
            only).

    Raises:
        SettingsError: The first setting that cannot be used, with the reason.
    """
    settable = settable_options()
    given: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key in SERVICE_OWNED:
            raise SettingsError(key, f"not settable: {SERVICE_OWNED[key]}")
        if key not in settable:
            raise SettingsError(key, f"unknown setting; use scripts/search.py's long option names "
                                     f"({', '.join(sorted(settable))})")
        if value is None:
            continue
        _check_kind(key, value, settable[key])
        given[key] = value
    try:
        checked = SearchOptions.model_validate(given)
    except ValidationError as exc:
        raise SettingsError(*first_error(exc, order=list(given))) from None
    resolved = checked.model_dump()
    for key, (low, high) in bounds(max_evaluations).items():
        value = resolved.get(key)
        if value is not None and not isinstance(value, bool) and isinstance(value, int) and not low <= value <= high:
            raise SettingsError(key, f"must be in [{low}, {high}] on this service, got {value!r}")
    for key in ("score", "ladder"):
        for score in [resolved[key]] if isinstance(resolved.get(key), str) else resolved.get(key) or ():
            parsed = parse_score(score)
            if isinstance(parsed, Finetune) and parsed.steps > MAX_FINETUNE_STEPS:
                raise SettingsError(key, f"{score!r}: at most finetune:{MAX_FINETUNE_STEPS} on this service")
    # The names first: a path the operator does not accept (hf: outside the models folder) is refused before
    # the configs' checks read anything there (a language model's tokenizer folder, search.lm_options).
    check_names(resolved, python=python, workdir=workdir, names=names)
    try:  # the run folder is a placeholder: the service sets the real one at launch
        checked.model_copy(update={"out": "runs/service-check"}).to_config()
    except (AmcError, ValueError) as exc:
        raise SettingsError(_named_field(str(exc), settable), str(exc)) from None
    for key in SERVICE_OWNED:
        resolved.pop(key, None)
    if resolved.get("ladder") is not None:
        resolved["ladder"] = list(resolved["ladder"])
    return Settings(given=given, options=resolved)


def _check_kind(key: str, value: Any, option: Option) -> None:
    """The JSON kind of a value must be the option's (the OpenAPI schema says which)."""
    ok = {"boolean": lambda v: isinstance(v, bool),
          "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "string": lambda v: isinstance(v, str),
          "list": lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))}
    if not ok[option.kind](value):
        raise SettingsError(key, f"must be {_KIND_WORDS[option.kind]}, got {value!r}")
    texts = value if isinstance(value, list) else [value] if isinstance(value, str) else []
    for text in texts:
        if len(text) > MAX_TEXT or any(ord(c) < 32 for c in text):
            raise SettingsError(key, f"must be at most {MAX_TEXT} printable characters")


_KIND_WORDS = {"boolean": "true or false", "integer": "an integer", "number": "a number", "string": "a string",
               "list": "a list of strings or a comma-separated string"}


def _named_field(message: str, settable: dict[str, Option]) -> str:
    """The setting a config error names first (``--min-keep (0.9) must not exceed ...`` -> ``min_keep``)."""
    for match in re.finditer(r"--([a-z][a-z0-9-]*)", message):
        key = match.group(1).replace("-", "_")
        if key in settable:
            return key
    return "settings"
