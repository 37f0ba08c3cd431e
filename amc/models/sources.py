"""Where a model comes from: the sources ``--model`` names, keyed by prefix.

``--model`` is one of

- a built-in name (a key of :data:`amc.models.MODELS`): ``cnn``, ``resnet20``, ...;
- ``timm:NAME``: ``timm.create_model(NAME, pretrained=False)``, random init (:mod:`amc.models.from_timm`);
- ``hf:PATH``: a Hugging Face ``save_pretrained`` folder on this machine (:mod:`amc.models.from_hf`);
- ``package.module:factory``: a function of the user's returning a ``torch.nn.Module``.

A prefixed name goes to the :class:`ModelSource` registered under its prefix (:data:`SOURCES`,
:func:`register_source`); any other name with a colon is a factory. A source that needs an optional package
says which extra installs it (:class:`MissingPackageError`); nothing is downloaded at any time.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from amc.errors import ConfigError, ModelError



class MissingPackageError(ModelError, ConfigError):
    """A model source needs an optional package that is not installed."""


@dataclass(frozen=True)
class ModelSpec:
    """What the data asks of a model: its input and its outputs.

    Attributes:
        in_channels: Channels of the input images.
        num_classes: Outputs (logits) per sample.
        input_size: ``(height, width)`` of the input images, or None when unknown.
    """

    in_channels: int
    num_classes: int
    input_size: tuple[int, int] | None = None


class ModelSource(ABC):
    """One way of naming models: ``prefix:REF`` builds through :meth:`build`."""

    prefix: ClassVar[str]
    package: ClassVar[str | None] = None  # optional package the source imports (None: none)
    extra: ClassVar[str] = "models"  # pyproject.toml's optional extra that installs it
    usage: ClassVar[str]  # how a name of this source is written, for messages

    @abstractmethod
    def build(self, ref: str, spec: ModelSpec, kwargs: Mapping[str, Any]) -> nn.Module:
        """The model ``prefix:ref`` names, taking ``spec``'s input and returning its logits.

        Raises:
            ModelError: ``ref`` names nothing this source can build, or ``kwargs`` do not fit it.
        """

    def files(self, ref: str) -> list[tuple[str, int, int]]:
        """``(file, size, mtime_ns)`` of the files ``ref`` is read from (none: the name alone says the model).

        Keys the cache of trained base models, so a model saved anew under the same name is trained anew.
        """
        return []

    def require(self, ref: str) -> Any:
        """Imports :attr:`package`, or says in one line which extra installs it."""
        assert self.package is not None
        if importlib.util.find_spec(self.package) is None:
            raise MissingPackageError(f"--model {self.prefix}:{ref} needs {self.package}: "
                                      f"pip install -e '.[{self.extra}]'")
        try:
            return importlib.import_module(self.package)
        except Exception as exc:  # noqa: BLE001 (e.g. timm's torchvision built for another torch: one line)
            raise MissingPackageError(f"--model {self.prefix}:{ref} needs a working {self.package}, and importing it "
                                      f"failed ({' '.join(str(exc).split())[:200]}); reinstall it: "
                                      f"pip install -e '.[{self.extra}]'") from None


SOURCES: dict[str, ModelSource] = {}


def register_source(source: ModelSource) -> ModelSource:
    """Adds ``source`` under its prefix (one source per prefix)."""
    if source.prefix in SOURCES:
        raise ValueError(f"a model source is already registered as {source.prefix!r}")
    SOURCES[source.prefix] = source
    return source


def split_source(name: str) -> tuple[ModelSource, str] | None:
    """``(source, ref)`` for a ``prefix:REF`` name of a registered source, else None."""
    prefix, colon, ref = name.partition(":")
    if colon and prefix in SOURCES:
        return SOURCES[prefix], ref
    return None


def resolve_factory(name: str, builtins: Mapping[str, Callable[..., nn.Module]]) -> Callable[..., nn.Module]:
    """The function a built-in name or ``package.module:factory`` names.

    Raises:
        ModelError: An unknown name, a module that does not import or an attribute that is not callable.
    """
    if name in builtins:
        return builtins[name]
    if ":" not in name:
        prefixes = ", ".join(source.usage for source in SOURCES.values())
        raise ModelError(f"unknown model {name!r}: use one of {sorted(builtins)}, {prefixes} or "
                         "'package.module:factory' for your own")
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


def call_factory(factory: Callable[..., nn.Module], name: str, spec: ModelSpec, kwargs: Mapping[str, Any]) -> nn.Module:
    """Calls ``factory`` with the arguments among ``in_channels``, ``num_classes`` (and ``input_size`` when
    it names it) that it accepts, plus ``kwargs``.

    Raises:
        ModelError: It takes none of ``kwargs``, fails with a TypeError or returns no ``nn.Module``.
    """
    wanted = {"in_channels": spec.in_channels, "num_classes": spec.num_classes, **kwargs}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError) as exc:
        raise ModelError(f"cannot inspect the factory of model {name!r} ({exc}); name a Python function") from exc
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    args = {k: v for k, v in wanted.items() if takes_any or k in params}
    if "input_size" in params and "input_size" not in args and spec.input_size is not None:
        args["input_size"] = spec.input_size  # only to a factory that names it: **kwargs may pass it on blindly
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


__all__ = ["SOURCES", "MissingPackageError", "ModelSource", "ModelSpec", "call_factory", "register_source",
           "resolve_factory", "split_source"]
