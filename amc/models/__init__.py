"""Built-in models (pure PyTorch) and the model registry.

A model is named either by a built-in name (:data:`MODELS`) or as ``package.module:factory``. Factories
are called with the keyword arguments among ``in_channels`` and ``num_classes`` that they accept.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from torch import nn

from amc.errors import ModelError
from amc.models.cnn import cnn
from amc.models.convnext import convnext
from amc.models.mobilenetv2 import mobilenetv2
from amc.models.resnet import resnet20, resnet56
from amc.models.vit import vit

MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn": cnn,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "mobilenetv2": mobilenetv2,
    "vit": vit,
    "convnext": convnext,
}


def _resolve_factory(name: str) -> Callable[..., nn.Module]:
    if name in MODELS:
        return MODELS[name]
    if ":" not in name:
        raise ModelError(
            f"unknown model {name!r}: use one of {sorted(MODELS)} or 'package.module:factory' for your own"
        )
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(
            f"cannot import module {module_name!r} of model {name!r} ({exc}); check that it is on PYTHONPATH"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"{module_name!r} has no callable {attr!r} (model {name!r}); name a factory function")
    return factory


def build_model(name: str, *, in_channels: int, num_classes: int, **kwargs: object) -> nn.Module:
    """Builds a model by registry name or ``package.module:factory``.

    Args:
        name: A key of :data:`MODELS` or ``package.module:factory``.
        in_channels: Channels of the input images.
        num_classes: Number of output classes.
        **kwargs: Extra factory arguments (e.g. ``width_mult`` for ``mobilenetv2``).

    Raises:
        ModelError: The name is unknown or the factory cannot be imported or does not return a module.
    """
    factory = _resolve_factory(name)
    wanted = {"in_channels": in_channels, "num_classes": num_classes, **kwargs}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError) as exc:
        raise ModelError(f"cannot inspect the factory of model {name!r} ({exc}); name a Python function") from exc
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    args = {k: v for k, v in wanted.items() if takes_any or k in params}
    unused = set(kwargs) - set(args)
    if unused:
        raise ModelError(f"model {name!r} does not accept {sorted(unused)}; remove them")
    try:
        model = factory(**args)
    except TypeError as exc:
        raise ModelError(
            f"calling the factory of model {name!r} with {sorted(args)} failed ({exc}); a factory takes "
            "in_channels and/or num_classes keyword arguments"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"factory of model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


__all__ = ["MODELS", "build_model", "cnn", "convnext", "mobilenetv2", "resnet20", "resnet56", "vit"]
