"""``--model timm:NAME``: a timm model, random init (``pretrained=False`` always: nothing is downloaded).

The model is built for the data: ``num_classes`` and ``in_chans`` from the dataset, and ``img_size`` (the
dataset's image size) for the models that take one (ViT, DeiT, Swin, ...), e.g. ``timm:vit_tiny_patch16_224``
with ``--model-kwargs '{"patch_size": 4}'`` runs on 8x8 digits. ``--model-kwargs`` go to
``timm.create_model`` as they are (they override the above). Weights come from ``--checkpoint`` (a
``state_dict`` of the same model, as ``torch.save(model.state_dict(), path)`` writes it), otherwise the base
model is trained and cached like a built-in one.

timm needs torchvision, whose registry wheels need the registry's own torch build: the main environment
(the CPU wheel of ``constraints.txt``) has no timm; ``make test-timm`` has (``.venv-timm``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch import nn

from amc.data.streaming import one_line
from amc.errors import ModelError
from amc.models.sources import ModelSource, ModelSpec, register_source

log = logging.getLogger(__name__)


class TimmSource(ModelSource):
    """``timm:NAME``: ``timm.create_model(NAME, pretrained=False, num_classes=..., in_chans=..., img_size=...)``."""

    prefix = "timm"
    package = "timm"
    usage = "'timm:NAME'"

    def build(self, ref: str, spec: ModelSpec, kwargs: Mapping[str, Any]) -> nn.Module:
        timm = self.require(ref)
        if not timm.is_model(ref):
            raise ModelError(f"timm has no model {ref!r} (--model timm:{ref}): list them with "
                             "python -c \"import timm; print(timm.list_models('*vit*'))\"")
        if kwargs.get("pretrained"):
            raise ModelError(f"timm:{ref} with pretrained weights: nothing is downloaded here; save the weights "
                             "with torch.save(model.state_dict(), PATH) and pass --checkpoint PATH")
        args = {"num_classes": spec.num_classes, "in_chans": spec.in_channels, **kwargs, "pretrained": False}
        model = None
        if spec.input_size is not None and "img_size" not in kwargs:
            try:
                model = self._create(timm, ref, {**args, "img_size": tuple(spec.input_size)})
            except _NoImageSize:
                log.debug("timm:%s takes no img_size: built at its own input size", ref)
        model = model if model is not None else self._create(timm, ref, args)
        _check_patches(ref, model, spec)
        return model

    @staticmethod
    def _create(timm: Any, ref: str, args: dict[str, Any]) -> nn.Module:
        try:
            return timm.create_model(ref, **args)
        except TypeError as exc:
            if "keyword argument 'img_size'" in str(exc) and "img_size" in args:
                raise _NoImageSize from None
            raise ModelError(f"timm.create_model({ref!r}, {_shown(args)}) failed ({one_line(exc)}); "
                             "fix --model-kwargs") from None
        except Exception as exc:  # noqa: BLE001 (a model's own check of its arguments: one line, with the fix)
            raise ModelError(f"timm.create_model({ref!r}, {_shown(args)}) failed ({one_line(exc)}); choose "
                             "--model-kwargs that fit the data (e.g. a smaller patch_size or window_size)") from None


class _NoImageSize(Exception):
    """The model's constructor takes no ``img_size``."""


def _check_patches(ref: str, model: nn.Module, spec: ModelSpec) -> None:
    """A patch embedding's patches fit in the data's images (a ViT's first forward would fail otherwise)."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if spec.input_size is None or not isinstance(patch, (tuple, list)) or len(patch) != 2:
        return
    if patch[0] > spec.input_size[0] or patch[1] > spec.input_size[1]:
        raise ModelError(f"timm:{ref} cuts {patch[0]}x{patch[1]} patches, larger than the dataset's "
                         f"{spec.input_size[0]}x{spec.input_size[1]} images: pass --model-kwargs "
                         "'{\"patch_size\": 4}' (or another that fits)")


def _shown(args: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


register_source(TimmSource())

__all__ = ["TimmSource"]
