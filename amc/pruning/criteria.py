"""Pruning criteria: which channels or weights go first, as objects (Torch-Pruning's ``Importance`` style).

A :class:`Criterion` scores the units of a Torch-Pruning group (structured pruning) and the weights of a
conv/linear layer (unstructured); the pruner removes the lowest scores. One that needs data
(``needs_data``) measures its statistics on the model being pruned in :meth:`Criterion.prepare`, from the
calibration batch the caller gives, and hands them back to the pruner, which passes them to the scoring
methods.

Each subclass with a ``name`` registers itself (:data:`CRITERIA`): a new criterion is one new class here
(and its test). Strings are parsed once, at the edge, by :func:`parse_criterion`. This module imports torch
only when a criterion scores, so the command lines list the names without loading it.

- ``l1`` / ``l2``: magnitude of the group's weights (AMC keeps the largest-L1 channels).
- ``random``: seeded random scores, the baseline every criterion must beat.
- ``taylor``: first-order Taylor expansion ``|w * dL/dw|`` (Molchanov et al., 2017).
- ``apoz``: average percentage of zeros of the channel's post-ReLU activation (Hu et al., 2016).
- ``obd``: Optimal Brain Damage (LeCun et al., 1990), saliency ``h * w^2 / 2`` with the Hessian's diagonal
  ``h`` approximated by the empirical Fisher.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from amc.errors import ConfigError

if TYPE_CHECKING:
    from torch import Generator, Tensor, nn

    from amc.graph.discover import LayerGraph
    from amc.graph.records import LayerSpec

Statistics = dict[str, "Tensor"]  # decision name -> what a data-driven criterion measured for it

OBD_MICRO_BATCH = 8  # samples per gradient in the empirical Fisher

CRITERIA: dict[str, type[Criterion]] = {}
"""The registry: criterion name -> class, in the order the classes are defined."""


class Criterion(ABC):
    """Scores channels (one Torch-Pruning group at a time) and weights; the lowest scores are pruned first.

    Attributes:
        name: The name users give (``--criterion``, ``policy.json``); a subclass that sets it registers.
        needs_data: Whether :meth:`prepare` needs a calibration batch ``(inputs, labels)``.
        channels_only: Whether it scores plain channels only (not heads or groups of channels).
    """

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False
    channels_only: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return  # an intermediate base class
        known = CRITERIA.get(cls.name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise TypeError(f"criterion name {cls.name!r} is taken by {known.__qualname__}: pick another name")
        CRITERIA[cls.name] = cls

    def prepare(self, model: nn.Module, graph: LayerGraph, calibration: tuple[Tensor, Tensor] | None) -> Statistics:
        """Measures what scoring needs on ``model`` (the copy being pruned; it may set ``.grad``).

        Returns:
            Per-decision statistics for :meth:`channel_scores` and :meth:`weight_scores` (empty by default).
        """
        return {}

    @abstractmethod
    def channel_scores(self, group: Any, n: int, stats: Tensor | None, generator: Generator) -> Tensor:
        """One score per channel (``n``) of a Torch-Pruning group; ``stats`` is the decision's statistics."""

    def unit_scores(self, spec: LayerSpec, group: Any, stats: Tensor | None, generator: Generator) -> Tensor:
        """One score per unit of decision ``spec``: a channel, a head (the mean over its channels) or the same
        channel of every group (the mean over the groups, as Torch-Pruning ranks grouped layers)."""
        if spec.pattern == "channel":
            return self.channel_scores(group, spec.out_channels, stats, generator)
        values = self.channel_scores(group, spec.out_channels * spec.unit, stats, generator)
        if spec.pattern == "head":
            return values.view(spec.out_channels, spec.unit).mean(1)  # (heads,)
        return values.view(spec.unit, spec.out_channels).mean(0)  # (channels per group,)

    @abstractmethod
    def weight_scores(self, weight: Tensor, stats: Tensor | None, generator: Generator) -> Tensor:
        """One score per weight of a conv/linear layer, ``weight``'s shape; ``stats``: its decision's."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _GroupImportance(Criterion):
    """A criterion whose channel scores are a Torch-Pruning group importance."""

    def _importance(self) -> Any:
        raise NotImplementedError

    def channel_scores(self, group: Any, n: int, stats: Tensor | None, generator: Generator) -> Tensor:
        values = self._importance()(group)
        if values is None:  # no weight in the group that the importance can score
            raise ConfigError(f"criterion {self.name!r} cannot score this group; use 'l1' or 'random'")
        return values


class L1(_GroupImportance):
    """Sum of the absolute weights of each channel's group (AMC's criterion)."""

    name = "l1"

    def _importance(self) -> Any:
        import torch_pruning as tp

        return tp.importance.GroupMagnitudeImportance(p=1)

    def weight_scores(self, weight: Tensor, stats: Tensor | None, generator: Generator) -> Tensor:
        return weight.abs()


class L2(_GroupImportance):
    """Sum of the squared weights of each channel's group."""

    name = "l2"

    def _importance(self) -> Any:
        import torch_pruning as tp

        return tp.importance.GroupMagnitudeImportance(p=2)

    def weight_scores(self, weight: Tensor, stats: Tensor | None, generator: Generator) -> Tensor:
        return weight.pow(2)


class Random(Criterion):
    """Seeded random scores: the baseline every criterion must beat."""

    name = "random"

    def channel_scores(self, group: Any, n: int, stats: Tensor | None, generator: Generator) -> Tensor:
        import torch

        return torch.rand(n, generator=generator)

    def unit_scores(self, spec: LayerSpec, group: Any, stats: Tensor | None, generator: Generator) -> Tensor:
        import torch

        return torch.rand(spec.out_channels, generator=generator)  # one draw per unit, whatever the pattern

    def weight_scores(self, weight: Tensor, stats: Tensor | None, generator: Generator) -> Tensor:
        import torch

        return torch.rand(weight.shape, generator=generator).to(weight.device)


class Taylor(_GroupImportance):
    """First-order Taylor expansion ``|w * dL/dw|`` (Molchanov et al., 2017), gradients of the calibration batch."""

    name = "taylor"
    needs_data = True

    def prepare(self, model: nn.Module, graph: LayerGraph, calibration: tuple[Tensor, Tensor] | None) -> Statistics:
        import torch.nn.functional as F

        inputs, labels = calibration
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), labels).backward()
        return {}

    def _importance(self) -> Any:
        import torch_pruning as tp

        return tp.importance.GroupTaylorImportance()

    def weight_scores(self, weight: Tensor, stats: Tensor | None, generator: Generator) -> Tensor:
        return (weight * weight.grad).abs()


class APoZ(Criterion):
    """Average percentage of zeros of each channel's post-ReLU activation on the calibration batch (Hu et al.,
    2016); for weights, ``|w|`` scaled by its output channel's activity."""

    name = "apoz"
    needs_data = True
    channels_only = True

    def prepare(self, model: nn.Module, graph: LayerGraph, calibration: tuple[Tensor, Tensor] | None) -> Statistics:
        import torch
        from torch import nn

        inputs, _ = calibration
        activity: dict[str, list[Tensor]] = {spec.name: [] for spec in graph.layers}
        handles = []
        for spec in graph.layers:
            if spec.pattern != "channel":
                others = [n for n, c in CRITERIA.items() if not c.channels_only]
                raise ConfigError(f"criterion {self.name!r} scores channels after a ReLU; decision {spec.name!r} "
                                  f"prunes {spec.pattern}s: use {', '.join(others[:-1])} or {others[-1]}")
            # Post-BN activations of members aligned with the decision's channels; else the layer output.
            probes = [n for n in spec.members
                      if isinstance(model.get_submodule(n), nn.modules.batchnorm._BatchNorm)
                      and model.get_submodule(n).num_features == spec.out_channels] or [spec.name]
            for name in probes:
                channel_dim = -1 if isinstance(model.get_submodule(name), nn.Linear) else 1  # Linear: channels last

                def hook(module, args, out, key=spec.name, cdim=channel_dim):
                    dims = [d for d in range(out.dim()) if d != cdim % out.dim()]
                    activity[key].append((out > 0).float().mean(dim=dims))  # (C,) share of non-zeros
                handles.append(model.get_submodule(name).register_forward_hook(hook))
        try:
            with torch.no_grad():
                model(inputs)
        finally:
            for handle in handles:
                handle.remove()
        return {name: torch.stack(acts).mean(0) for name, acts in activity.items()}

    def channel_scores(self, group: Any, n: int, stats: Tensor | None, generator: Generator) -> Tensor:
        return stats

    def weight_scores(self, weight: Tensor, stats: Tensor | None, generator: Generator) -> Tensor:
        return weight.abs() * stats.view(-1, *([1] * (weight.dim() - 1)))


class OBD(_GroupImportance):
    """Optimal Brain Damage (LeCun et al., 1990): saliency ``h * w^2 / 2``, the Hessian's diagonal ``h``
    approximated by the empirical Fisher (mean squared gradient over micro-batches of the calibration batch);
    channels sum their weights' saliencies (Torch-Pruning's grouped OBD)."""

    name = "obd"
    needs_data = True

    def prepare(self, model: nn.Module, graph: LayerGraph, calibration: tuple[Tensor, Tensor] | None) -> Statistics:
        _fisher_into_grad(model, *calibration)
        return {}

    def _importance(self) -> Any:
        import torch_pruning as tp

        return tp.importance.GroupHessianImportance()  # w^2 * .grad, and .grad holds the Fisher diagonal

    def weight_scores(self, weight: Tensor, stats: Tensor | None, generator: Generator) -> Tensor:
        return 0.5 * weight.grad * weight.pow(2)


def _fisher_into_grad(model: nn.Module, inputs: Tensor, labels: Tensor) -> None:
    """Sets each parameter's ``.grad`` to its diagonal empirical Fisher: the mean of squared gradients of
    micro-batches (an estimate of the loss Hessian's diagonal that is never negative)."""
    import torch
    import torch.nn.functional as F

    params = [p for p in model.parameters() if p.requires_grad]
    fisher = [torch.zeros_like(p) for p in params]
    chunks = list(zip(inputs.split(OBD_MICRO_BATCH), labels.split(OBD_MICRO_BATCH)))
    for x, y in chunks:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        for f, p in zip(fisher, params):
            if p.grad is not None:
                f += p.grad.detach().pow(2)
    for f, p in zip(fisher, params):
        p.grad = f / len(chunks)


def criterion_names() -> tuple[str, ...]:
    """The registered criteria's names, in definition order (``l1`` first: the default)."""
    return tuple(CRITERIA)


def parse_criterion(value: str | Criterion) -> Criterion:
    """The criterion called ``value`` (a :class:`Criterion` is returned as it is).

    Raises:
        ConfigError: No criterion has that name; the message lists the choices.
    """
    if isinstance(value, Criterion):
        return value
    cls = CRITERIA.get(value) if isinstance(value, str) else None
    if cls is None:
        raise ConfigError(f"unknown criterion {value!r}: use one of {criterion_names()}")
    return cls()


__all__ = ["CRITERIA", "OBD_MICRO_BATCH", "Criterion", "Statistics", "criterion_names", "parse_criterion"]
