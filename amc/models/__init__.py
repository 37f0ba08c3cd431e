"""Built-in models (pure PyTorch) and the model registry.

A model is named by a built-in name (:data:`MODELS`), by a source prefix (``timm:NAME``, ``hf:PATH``:
:mod:`amc.models.sources`) or as ``package.module:factory``. Factories are called with the keyword arguments
among ``in_channels`` and ``num_classes`` (and ``input_size``, when they name it) that they accept.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from amc.models import from_hf, from_timm  # noqa: F401 (register the hf: and timm: sources)
from amc.models.cnn import cnn
from amc.models.convnext import convnext
from amc.models.mobilenetv2 import mobilenetv2
from amc.models.resnet import resnet20, resnet56
from amc.errors import ModelError
from amc.models.lm import LANGUAGE_MODELS, build_lm, tiny_lm  # decoder LMs: a registry of their own (ids in, logits out)
from amc.models.sources import SOURCES, ModelSpec, call_factory, resolve_factory, split_source
from amc.models.vit import vit

MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn": cnn,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "mobilenetv2": mobilenetv2,
    "vit": vit,
    "convnext": convnext,
}


def build_model(name: str, *, in_channels: int, num_classes: int, input_size: tuple[int, int] | None = None,
                **kwargs: object) -> nn.Module:
    """Builds a model by registry name, ``timm:NAME``, ``hf:PATH`` or ``package.module:factory``.

    Args:
        name: A key of :data:`MODELS`, ``prefix:REF`` of a source in :data:`amc.models.sources.SOURCES`, or
            ``package.module:factory``.
        in_channels: Channels of the input images.
        num_classes: Number of output classes.
        input_size: ``(height, width)`` of the input images (timm's ``img_size``; checked against a Hugging
            Face image model's; None: unknown, e.g. token ids).
        **kwargs: Extra factory arguments (e.g. ``width_mult`` for ``mobilenetv2``; ``timm.create_model``'s
            or ``from_pretrained``'s for ``timm:`` and ``hf:``).

    Raises:
        ModelError: The name is unknown or the factory cannot be imported or does not return a module.
        amc.models.sources.MissingPackageError: ``timm:`` or ``hf:`` without the package (names the extra).
    """
    size = None if input_size is None else tuple(int(s) for s in input_size)
    spec = ModelSpec(in_channels=in_channels, num_classes=num_classes, input_size=size)
    found = None if name in MODELS else split_source(name)
    if size is not None and len(size) != 2 and (found is None or found[0].prefix != "hf"):
        raise ModelError(f"model {name!r} takes images, and the dataset gives token ids (a text dataset): use an "
                         "hf:PATH text classifier (*ForSequenceClassification)")
    if found is not None:
        source, ref = found
        return source.build(ref, spec, kwargs)
    return call_factory(resolve_factory(name, MODELS), name, spec, kwargs)


def model_files(name: str) -> list[tuple[str, int, int]]:
    """``(file, size, mtime_ns)`` of the files model ``name`` is read from (``hf:PATH``), else ``[]``."""
    found = None if name in MODELS else split_source(name)
    return found[0].files(found[1]) if found is not None else []


__all__ = ["LANGUAGE_MODELS", "MODELS", "SOURCES", "build_lm", "build_model", "model_files", "cnn", "convnext", "mobilenetv2", "resnet20", "resnet56", "tiny_lm", "vit"]
