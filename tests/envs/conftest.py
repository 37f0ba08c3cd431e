"""Fixtures of the environment tests: layer graphs of the small built-in models, real data and a stub evaluator."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from amc.data.datasets import DataSplits
from amc.evaluation.evaluator import EvalConfig, EvalResult, PolicyEvaluator
from amc.graph.discover import LayerGraph, discover
from amc.pruning.policy import Policy
from tests.conftest import SMALL_MODELS, build_small_model

MODEL_NAMES = tuple(SMALL_MODELS)  # cnn, resnet20, resnet56, mobilenetv2
# Small enough that an evaluation (prune + 1 BN batch + 64 validation images) takes milliseconds.
TINY_EVAL = EvalConfig(val_limit=64, bn_batches=1, bn_batch_size=32)


class StubEvaluator:
    """An :class:`~amc.evaluation.evaluator.Evaluator` that prunes nothing: accuracy is a fixed number.

    It records the policies it saw, so tests can check what the environment evaluated.
    """

    def __init__(self, accuracy: float = 0.75) -> None:
        self.accuracy = accuracy
        self.seen: list[Policy] = []

    def evaluate(self, policy: Policy) -> EvalResult:
        self.seen.append(policy)
        return EvalResult(accuracy=self.accuracy, loss=1.0, key=tuple(policy.channels.values()), seconds=0.0,
                          forward_seconds=0.0)

    def evaluate_many(self, policies: Sequence[Policy]) -> list[EvalResult]:
        return [self.evaluate(p) for p in policies]


@pytest.fixture(scope="session")
def model_graph() -> Callable[..., tuple[nn.Module, LayerGraph]]:
    """``model_graph(name, round_to=1)`` -> (seeded small model, its layer graph), built once per session."""
    built: dict[tuple[str, int], tuple[nn.Module, LayerGraph]] = {}

    def get(name: str, round_to: int = 1) -> tuple[nn.Module, LayerGraph]:
        if (name, round_to) not in built:
            model, example = build_small_model(name)
            built[name, round_to] = (model, discover(model, example[:1], round_to=round_to))
        return built[name, round_to]

    return get


def _reshape(dataset: TensorDataset, shape: tuple[int, int, int]) -> TensorDataset:
    x, y = dataset.tensors  # (N, 1, 8, 8)
    x = F.interpolate(x, size=shape[1:], mode="nearest").repeat(1, shape[0], 1, 1).contiguous()  # (N, C, H, W)
    return TensorDataset(x, y)


@pytest.fixture(scope="session")
def digits_as() -> Callable[[tuple[int, int, int]], DataSplits]:
    """``digits_as((C, H, W))``: sklearn's digits, upsampled to H x W and repeated over C channels."""
    from amc.data.datasets import load_dataset

    digits = load_dataset("digits")

    def get(shape: tuple[int, int, int]) -> DataSplits:
        if tuple(shape) == digits.input_shape:
            return digits
        return DataSplits(train=_reshape(digits.train, shape), val=_reshape(digits.val, shape),
                          test=_reshape(digits.test, shape), num_classes=digits.num_classes,
                          input_shape=tuple(shape), name=f"digits-{'x'.join(map(str, shape))}")

    return get


@pytest.fixture(scope="session")
def real_evaluator(model_graph, digits_as) -> Callable[[str], PolicyEvaluator]:
    """``real_evaluator(name)``: a :class:`PolicyEvaluator` of the small model on digits shaped for it."""

    def get(name: str) -> PolicyEvaluator:
        model, graph = model_graph(name)
        return PolicyEvaluator(model, graph, digits_as(graph.input_shape), TINY_EVAL)

    return get


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The tiny models run faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
