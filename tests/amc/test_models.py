"""Tests for amc.models: every built-in builds and runs; the registry resolves and refuses names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from amc.errors import AmcError, ModelError
from amc.models import MODELS, build_model
from amc.models.cnn import VGGSmall

NUM_CLASSES = 7  # not 10, so a factory that ignores num_classes is caught


def tiny_factory(in_channels: int) -> nn.Module:
    """A user factory that takes in_channels only; build_model must not pass num_classes."""
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def not_a_model(in_channels: int, num_classes: int) -> str:
    return f"{in_channels}x{num_classes}"


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_builtin_builds_and_runs_at_every_size(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels=in_channels, num_classes=NUM_CLASSES).eval()
    assert isinstance(model, nn.Module)
    with torch.no_grad():
        for size in (8, 28, 32):
            out = model(torch.randn(2, in_channels, size, size))
            assert out.shape == (2, NUM_CLASSES), (name, in_channels, size)
            assert torch.isfinite(out).all()


def test_extra_kwargs_reach_the_factory() -> None:
    narrow = build_model("mobilenetv2", in_channels=3, num_classes=10, width_mult=0.35)
    wide = build_model("mobilenetv2", in_channels=3, num_classes=10)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in wide.parameters())


def test_user_factory_by_module_path() -> None:
    torch.manual_seed(0)
    model = build_model("amc.models.cnn:cnn", in_channels=3, num_classes=NUM_CLASSES, width=8)
    assert isinstance(model, VGGSmall)
    assert model.features[0].in_channels == 3 and model.features[0].out_channels == 8
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, NUM_CLASSES)


def test_user_factory_gets_only_the_arguments_it_accepts() -> None:
    model = build_model(f"{__name__}:tiny_factory", in_channels=2, num_classes=NUM_CLASSES)
    assert model(torch.randn(2, 2, 8, 8)).shape == (2, 4)


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(ModelError) as info:
        build_model("resnet99", in_channels=3, num_classes=10)
    message = str(info.value)
    assert "'resnet99'" in message
    for choice in MODELS:
        assert choice in message
    assert "package.module:factory" in message


def test_missing_factory_attribute() -> None:
    with pytest.raises(ModelError, match=r"'amc\.models'.*'missing'"):
        build_model("amc.models:missing", in_channels=3, num_classes=10)


def test_unimportable_module() -> None:
    with pytest.raises(ModelError, match=r"no_such_pkg_xyz.*PYTHONPATH"):
        build_model("no_such_pkg_xyz:factory", in_channels=3, num_classes=10)


def test_factory_that_returns_no_module() -> None:
    with pytest.raises(ModelError, match=r"returned str, not a torch\.nn\.Module"):
        build_model(f"{__name__}:not_a_model", in_channels=3, num_classes=10)


def test_unaccepted_kwarg_is_refused() -> None:
    with pytest.raises(ModelError, match=r"'resnet20' does not accept \['width_mult'\]"):
        build_model("resnet20", in_channels=3, num_classes=10, width_mult=0.5)


def test_model_errors_are_project_errors() -> None:
    assert issubclass(ModelError, AmcError)
