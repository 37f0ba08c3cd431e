"""Acceptance: bad input gets a project exception (an :class:`amc.errors.AmcError`) whose message names
the bad value and the fix."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from amc.data.datasets import load_dataset
from amc.errors import AmcError, ConfigError, DataError, ModelError, PolicyError
from amc.evaluation.evaluator import EvalConfig
from amc.graph.discover import LayerGraph, discover
from amc.models import build_model
from amc.pruning.policy import Policy
from amc.pruning.criteria import CRITERIA
from amc.pruning.pruner import prune_model
from amc.train import TrainConfig, load_checkpoint

BAD_KEEP = [0, -0.1, 1.5, math.nan]


def assert_message(error: BaseException, *fragments: str) -> None:
    assert isinstance(error, AmcError), type(error)
    message = str(error)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.fixture(scope="module")
def cnn_graph(small_model) -> tuple[torch.nn.Module, LayerGraph]:
    model, x = small_model("cnn")
    return model, discover(model, x)


@pytest.mark.parametrize("bad", BAD_KEEP)
def test_keep_ratio_out_of_range_in_graph(cnn_graph, bad: float) -> None:
    _, graph = cnn_graph
    keep = [0.5] * len(graph)
    keep[2] = bad
    with pytest.raises(ConfigError) as info:
        graph.channels(keep)
    assert_message(info.value, repr(bad), repr(graph.names[2]), "(0, 1]")


@pytest.mark.parametrize("bad", BAD_KEEP)
def test_keep_ratio_out_of_range_in_prune_model(cnn_graph, bad: float) -> None:
    model, graph = cnn_graph
    keep = [0.5] * len(graph)
    keep[-1] = bad
    for granularity in ("channel", "weight"):
        with pytest.raises(ConfigError) as info:
            prune_model(model, graph, keep, granularity=granularity)
        assert_message(info.value, repr(bad), repr(graph.names[-1]), "(0, 1]")


@pytest.mark.parametrize("bad", BAD_KEEP)
def test_keep_ratio_out_of_range_in_policy(bad: float) -> None:
    with pytest.raises(PolicyError) as info:
        Policy(keep={"features.0": 0.5, "features.3": bad})
    assert_message(info.value, "'keep.features.3'", repr(bad), "(0, 1]")


def test_wrong_number_of_keep_ratios(cnn_graph) -> None:
    _, graph = cnn_graph
    with pytest.raises(ConfigError) as info:
        graph.channels([0.5] * (len(graph) + 1))
    assert_message(info.value, f"expected {len(graph)} keep ratios", f"got {len(graph) + 1}")


def test_unknown_model() -> None:
    with pytest.raises(ModelError) as info:
        build_model("vgg16", in_channels=3, num_classes=10)
    assert_message(info.value, "'vgg16'", "resnet20", "package.module:factory")


def test_unknown_criterion_in_prune_model(cnn_graph) -> None:
    model, graph = cnn_graph
    with pytest.raises(ConfigError) as info:
        prune_model(model, graph, [0.5] * len(graph), criterion="l3")
    assert_message(info.value, "'l3'", *CRITERIA)


def test_unknown_criterion_in_eval_config() -> None:
    with pytest.raises(ConfigError) as info:
        EvalConfig(criterion="magnitude")
    assert_message(info.value, "'magnitude'", *CRITERIA)


def test_unknown_granularity(cnn_graph) -> None:
    model, graph = cnn_graph
    with pytest.raises(ConfigError) as info:
        prune_model(model, graph, [0.5] * len(graph), granularity="filter")
    assert_message(info.value, "'filter'", "channel", "weight")


def test_checkpoint_of_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "resnet20.pt"
    torch.save(build_model("resnet20", in_channels=1, num_classes=10).state_dict(), path)
    cnn = build_model("cnn", in_channels=1, num_classes=10)
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    with pytest.raises(ModelError) as info:
        load_checkpoint(cnn, path)
    assert_message(info.value, str(path), "architecture", "VGGSmall", "--model")
    assert all(torch.equal(cnn.state_dict()[k], v) for k, v in before.items())


def test_checkpoint_with_other_widths(tmp_path: Path) -> None:
    path = tmp_path / "cnn16.pt"
    torch.save(build_model("cnn", in_channels=1, num_classes=10, width=16).state_dict(), path)
    with pytest.raises(ModelError) as info:
        load_checkpoint(build_model("cnn", in_channels=1, num_classes=10), path)
    assert_message(info.value, str(path), "architecture", "shape mismatch", ".weight'")


def test_missing_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.pt"
    with pytest.raises(ModelError) as info:
        load_checkpoint(build_model("cnn", in_channels=1, num_classes=10), path)
    assert_message(info.value, str(path), "does not exist", "state_dict")


def test_unreadable_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelError) as info:
        load_checkpoint(build_model("cnn", in_channels=1, num_classes=10), path)
    assert_message(info.value, str(path), "cannot read")


def test_missing_data_directory(tmp_path: Path) -> None:
    root = tmp_path / "nope"
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", root=root)
    assert_message(info.value, str(root), "apt-get install", "--data-dir")


def test_malformed_data_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", root=tmp_path)
    assert_message(info.value, str(tmp_path), "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def test_negative_epochs() -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(epochs=-1)
    assert_message(info.value, "epochs", "-1", ">= 0")


# Regressions found in review: numpy scalars are valid ratios; factory failures are ModelErrors;
# a policy names a bad criterion or resource at load time.
def test_numpy_and_tensor_scalars_are_valid_keep_ratios() -> None:
    import numpy as np

    from amc.graph.widths import channels_for

    assert channels_for(np.float32(0.5), 10) == 5
    assert channels_for(torch.tensor(0.5).item(), 10) == 5
    with pytest.raises(ConfigError, match="True"):
        channels_for(True, 10)


@pytest.mark.parametrize("name", ["torch.nn:Linear", "collections:OrderedDict", "math:sqrt"])
def test_factory_failures_are_model_errors(name: str) -> None:
    from amc.errors import ModelError
    from amc.models import build_model

    with pytest.raises(ModelError, match=name.replace(".", r"\.")):
        build_model(name, in_channels=1, num_classes=3)


@pytest.mark.parametrize(("field", "value"), [("criterion", "bogus"), ("resource", "watts"), ("budget", True)])
def test_policy_refuses_bad_criterion_resource_budget(field: str, value: object) -> None:
    from amc.errors import PolicyError
    from amc.pruning.policy import Policy

    with pytest.raises(PolicyError, match=field):
        Policy(keep={"a": 0.5}, **{field: value})


def test_a_layer_called_twice_is_refused_naming_the_module():
    from torch import nn

    from amc.errors import UnsupportedModelError

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, padding=1)
            self.shared = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Linear(8, 10)

        def forward(self, x):
            x = self.shared(self.shared(self.stem(x)))
            return self.head(x.mean((2, 3)))

    with pytest.raises(UnsupportedModelError) as info:
        discover(Twice(), torch.randn(1, 1, 8, 8))
    message = str(info.value)
    assert "'shared' (Conv2d, 2 calls)" in message and "\n" not in message
    assert "give each use its own module" in message
