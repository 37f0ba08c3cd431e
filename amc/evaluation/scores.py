"""Candidate scores: what a search maximises for each pruned candidate, cheapest first.

A score turns a freshly pruned copy of the base model into the model whose validation accuracy the
search sees. Every score starts with adaptive BatchNorm (EagleEye, Li et al. 2020): running statistics
re-estimated on a few training batches; the evaluator does that, then calls the score's :meth:`Score.refine`.

| name             | after adaptive BN                                                         |
|------------------|---------------------------------------------------------------------------|
| ``bn``           | nothing: the pruned model as it is (EagleEye's score)                      |
| ``reconstruct``  | least-squares refit of every layer whose inputs lost channels, so that it  |
|                  | reproduces the base model's outputs on sampled feature-map points (He et   |
|                  | al. 2017, "Channel pruning"; AMC samples ~10 points from 60 images), then   |
|                  | adaptive BN again (:mod:`amc.evaluation.reconstruct`)                      |
| ``finetune:K``   | ``K`` SGD steps on training batches (the same seeded batches for every     |
|                  | candidate); ``finetune:K+kd`` distils from the base model's logits          |
|                  | (:mod:`amc.evaluation.finetune`)                                           |

The base model is never modified, and every score is deterministic for a given seed.

A score is a small frozen dataclass (picklable, so Ray workers receive it) registered under its ``name``
when its class is defined; :func:`parse_score` turns the spelling of a command line, config file or
policy file into one, and ``str(score)`` gives that spelling back. Adding a score is one subclass::

    @dataclass(frozen=True)
    class Noisy(Score):
        name = "noisy"
        def refine(self, pruned, kept, inputs, prepared): ...

This module imports no torch (the command lines check ``--score`` before torch is loaded); the numerics
live in :mod:`amc.evaluation.reconstruct` and :mod:`amc.evaluation.finetune`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from amc.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor, nn
    from torch.utils.data import Dataset

    from amc.graph.discover import LayerGraph

_REGISTRY: dict[str, type[Score]] = {}


class ScoreSettings(Protocol):
    """The evaluation settings a score reads (:class:`~amc.evaluation.evaluator.EvalConfig` has them)."""

    seed: int
    reconstruct_images: int
    reconstruct_points: int
    reuse_base: bool


class ScoreInputs(Protocol):
    """What a score is given by the evaluator that runs it (:class:`~amc.evaluation.evaluator.PolicyEvaluator`).

    Attributes:
        model: The trained base model, on the evaluation device; a score must not modify it.
        graph: Its layer graph.
        config: The evaluation settings (seed, reconstruction sizes).
        train_set: The training split (a score may read it, e.g. to fine-tune).
    """

    model: nn.Module
    graph: LayerGraph
    config: ScoreSettings
    train_set: Dataset

    def recalibrate(self, model: nn.Module) -> None:
        """Adaptive BN: re-estimates ``model``'s BatchNorm statistics on the evaluator's training batches."""

    def training_images(self, n: int) -> Tensor:
        """``n`` seeded training images (N, C, H, W) apart from the BN batches, on the evaluation device."""


class Score(ABC):
    """A candidate score: how a pruned copy becomes the model whose validation accuracy ranks it.

    Subclasses are frozen dataclasses whose fields are the score's parameters, registered under ``name``
    when they are defined.

    Attributes:
        name: The registry key and the spelling of a score without parameters.
        choices: The spellings listed in messages and ``--help`` (default: ``(name,)``).
        hint: How to fill in the choices' parameters, shown when a value is not understood.
        masked_weights: The score also works on ``granularity="weight"`` policies (masked weights).
    """

    name: ClassVar[str] = ""
    choices: ClassVar[tuple[str, ...]] = ()
    hint: ClassVar[str] = ""
    masked_weights: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            if not cls.__dict__.get("choices"):
                cls.choices = (cls.name,)
            _REGISTRY[cls.name] = cls

    @classmethod
    def from_text(cls, text: str) -> Score | None:
        """This class's score spelled ``text``, or None when ``text`` is not one of its spellings."""
        return cls() if text == cls.name else None

    @staticmethod
    def parse(text: str | Score) -> Score:
        """Same as :func:`parse_score`."""
        return parse_score(text)

    def prepare(self, inputs: ScoreInputs) -> Any:
        """What the score gathers once per evaluator (e.g. its training samples); given to every :meth:`refine`."""
        return None

    def passes(self, pruned: nn.Module, inputs: ScoreInputs, prepared: Any) -> None:
        """Runs the forward (and backward) passes :meth:`refine` contains on ``pruned``, and nothing else: the
        floor of its cost, which the overhead benchmark compares it with (``pruned`` may change)."""

    @abstractmethod
    def refine(self, pruned: nn.Module, kept: dict[str, list[int]], inputs: ScoreInputs, prepared: Any) -> None:
        """Turns ``pruned`` (BatchNorm already recalibrated) into the model that is validated, in place.

        Args:
            pruned: A pruned copy of ``inputs.model``, its own to change.
            kept: Decision name -> the base output channels it kept (from :func:`amc.pruning.pruner.prune_model`).
            inputs: The evaluator: base model, graph, settings, training data.
            prepared: What :meth:`prepare` returned for this evaluator.
        """

    def __str__(self) -> str:
        return self.name


def parse_score(text: str | Score) -> Score:
    """The score spelled ``text`` (a :class:`Score` is returned as it is).

    Raises:
        ConfigError: No registered score is spelled so; the message lists the choices.
    """
    if isinstance(text, Score):
        return text
    for cls in _REGISTRY.values():
        score = cls.from_text(str(text))
        if score is not None:
            return score
    hints = "; ".join(cls.hint for cls in _REGISTRY.values() if cls.hint)
    raise ConfigError(f"unknown score {text!r}: use one of {', '.join(score_choices())}"
                      + (f" ({hints})" if hints else ""))


def check_score(text: str | Score) -> str:
    """The canonical spelling of a score, or :class:`ConfigError`."""
    return str(parse_score(text))


def score_choices() -> tuple[str, ...]:
    """Every registered score's spellings, in the order the classes were defined."""
    return tuple(choice for cls in _REGISTRY.values() for choice in cls.choices)


@dataclass(frozen=True)
class AdaptiveBN(Score):
    """``bn``: the pruned model with re-estimated BatchNorm statistics, nothing more (EagleEye)."""

    name = "bn"
    masked_weights = True

    def refine(self, pruned: nn.Module, kept: dict[str, list[int]], inputs: ScoreInputs, prepared: Any) -> None:
        pass  # adaptive BN is all: the evaluator has done it


@dataclass(frozen=True)
class Reconstruct(Score):
    """``reconstruct``: least-squares refit of the layers whose inputs lost channels, then adaptive BN again."""

    name = "reconstruct"

    def prepare(self, inputs: ScoreInputs) -> Any:
        """The calibration images with the base model's outputs on them (kept for every candidate)."""
        from amc.evaluation.reconstruct import BaseOutputs

        return BaseOutputs(inputs.model, inputs.training_images(inputs.config.reconstruct_images))

    def refine(self, pruned: nn.Module, kept: dict[str, list[int]], inputs: ScoreInputs, prepared: Any) -> None:
        from amc.evaluation.reconstruct import reconstruct, reconstruction_targets

        targets = reconstruction_targets(inputs.graph, kept, pruned)
        fast = inputs.config.reuse_base  # False: the base outputs and one pass per layer, every candidate
        reconstruct(pruned, inputs.model, targets, prepared.images, points=inputs.config.reconstruct_points,
                    seed=inputs.config.seed, wanted=prepared.get(list(targets)) if fast else None, one_pass=fast)
        inputs.recalibrate(pruned)

    def passes(self, pruned: nn.Module, inputs: ScoreInputs, prepared: Any) -> None:
        import torch

        with torch.no_grad():
            pruned.eval()(prepared.images)
        inputs.recalibrate(pruned)


_FINETUNE = re.compile(r"finetune:(\d+)(\+kd)?")


@dataclass(frozen=True)
class Finetune(Score):
    """``finetune:K`` (``K`` seeded SGD steps) or ``finetune:K+kd`` (distilled from the base model's logits).

    Attributes:
        steps: ``K >= 1`` SGD steps of 64 samples.
        distill: Train on the base model's soft targets too (Hinton et al. 2015).
    """

    steps: int = 1
    distill: bool = False

    name = "finetune"
    choices = ("finetune:K", "finetune:K+kd")
    hint = "K >= 1 SGD steps, e.g. finetune:20+kd"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"finetune needs K >= 1 SGD steps, got {self.steps}: use e.g. finetune:20")

    @classmethod
    def from_text(cls, text: str) -> Finetune | None:
        match = _FINETUNE.fullmatch(text)
        if match and int(match.group(1)) >= 1:
            return cls(steps=int(match.group(1)), distill=bool(match.group(2)))
        return None

    def prepare(self, inputs: ScoreInputs) -> Any:
        from amc.evaluation.finetune import finetune_samples

        return finetune_samples(inputs.train_set, steps=self.steps, seed=inputs.config.seed)

    def refine(self, pruned: nn.Module, kept: dict[str, list[int]], inputs: ScoreInputs, prepared: Any) -> None:
        from amc.evaluation.finetune import finetune_steps

        finetune_steps(pruned, inputs.train_set, steps=self.steps, seed=inputs.config.seed,
                       teacher=inputs.model if self.distill else None, samples=prepared)

    def passes(self, pruned: nn.Module, inputs: ScoreInputs, prepared: Any) -> None:
        from amc.evaluation.finetune import training_passes

        training_passes(pruned, prepared, teacher=inputs.model if self.distill else None)

    def __str__(self) -> str:
        return f"finetune:{self.steps}" + ("+kd" if self.distill else "")


def __getattr__(name: str) -> Any:
    if name == "SCORE_CHOICES":  # computed: a score class defined after this module still counts
        return score_choices()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AdaptiveBN", "Finetune", "Reconstruct", "Score", "ScoreInputs", "ScoreSettings", "check_score",
           "parse_score", "score_choices"]
