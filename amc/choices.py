"""Names of the built-in datasets, pruning criteria and candidate scores, free of heavy imports.

The command lines offer them as choices, so a bad argument fails at once, before torch is imported.
:mod:`amc.data.datasets`, :mod:`amc.pruning.pruner` and :mod:`amc.evaluation.scores` implement them and re-export these names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from amc.errors import ConfigError

DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10")
CRITERIA = ("l1", "l2", "random", "taylor", "apoz", "obd")

SCORE_CHOICES = ("bn", "reconstruct", "finetune:K", "finetune:K+kd")
_FINETUNE = re.compile(r"finetune:(\d+)(\+kd)?")


@dataclass(frozen=True)
class Score:
    """A parsed candidate score: ``kind`` ``"bn"``, ``"reconstruct"`` or ``"finetune"``."""

    kind: str = "bn"
    steps: int = 0
    distill: bool = False

    @classmethod
    def parse(cls, text: str) -> Score:
        """``bn``, ``reconstruct``, ``finetune:K`` or ``finetune:K+kd`` (K >= 1 SGD steps).

        Raises:
            ConfigError: Any other value; the message lists the choices.
        """
        if text in ("bn", "reconstruct"):
            return cls(kind=text)
        match = _FINETUNE.fullmatch(str(text))
        if match and int(match.group(1)) >= 1:
            return cls(kind="finetune", steps=int(match.group(1)), distill=bool(match.group(2)))
        raise ConfigError(f"unknown score {text!r}: use one of {', '.join(SCORE_CHOICES)} (K >= 1 SGD steps, "
                          "e.g. finetune:20+kd)")

    def __str__(self) -> str:
        if self.kind == "finetune":
            return f"finetune:{self.steps}" + ("+kd" if self.distill else "")
        return self.kind


def check_score(text: str) -> str:
    """The canonical spelling of a score, or :class:`ConfigError`."""
    return str(Score.parse(text))
