"""Tests for amc.pruning.pruner and amc.evaluation.evaluator.

Acceptance: every pruned model (all criteria, both granularities) runs forward with the original input
shape and output shape; structured pruning makes the model physically smaller.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from amc.cost.analytic import ParamsCost
from amc.errors import ConfigError
from amc.evaluation.evaluator import EvalConfig, PolicyEvaluator
from amc.graph.discover import LayerGraph, discover
from amc.graph.widths import weights_kept
from amc.models import MODELS
from amc.pruning.criteria import CRITERIA, Criterion, criterion_names, parse_criterion
from amc.pruning.policy import Policy
from amc.pruning.pruner import prune_model

MODEL_NAMES = ("cnn", "resnet20", "resnet56", "mobilenetv2")
GRANULARITIES = ("channel", "weight")
_BN = nn.modules.batchnorm._BatchNorm

Base = tuple[nn.Module, Tensor, LayerGraph]


@pytest.fixture(scope="module")
def base(small_model) -> Callable[[str], Base]:
    """``base(name)`` -> (model, example input, graph), built once per module and shared read-only."""
    cache: dict[str, Base] = {}

    def get(name: str) -> Base:
        if name not in cache:
            model, x = small_model(name)
            cache[name] = (model, x, discover(model, x))
        return cache[name]

    return get


def random_keep(graph: LayerGraph, seed: int) -> list[float]:
    return np.random.default_rng(seed).uniform(0.2, 1.0, len(graph)).tolist()


def calibration(x: Tensor) -> tuple[Tensor, Tensor]:
    return x, torch.arange(len(x)) % 10


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def out_width(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def weighted_members(model: nn.Module, graph: LayerGraph) -> list[tuple[int, str, nn.Module]]:
    """(decision index, name, module) of every conv/linear whose weights a decision prunes."""
    return [(d, name, model.get_submodule(name)) for d, spec in enumerate(graph.layers) for name in spec.members
            if not isinstance(model.get_submodule(name), _BN)]


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: nn.Module, before: dict[str, Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} changed"


def test_every_builtin_is_covered() -> None:
    # vit and convnext (issue 21) are covered by tests/amc/test_modern.py: the shared small-model fixture
    # (tests/conftest.py) holds the classic CNNs.
    assert set(MODEL_NAMES) == set(MODELS) - {"vit", "convnext"}


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_pruned_model_keeps_io_shape(base, name: str, criterion: str, granularity: str) -> None:
    model, x, graph = base(name)
    before = snapshot(model)
    with torch.no_grad():
        expected_shape = model(x).shape
    keep = random_keep(graph, seed=len(name))
    assert min(keep) >= 0.2 and max(keep) <= 1.0

    pruned = prune_model(model, graph, keep, criterion=criterion, granularity=granularity,
                         calibration=calibration(x), seed=0)

    with torch.no_grad():
        out = pruned(x)
    assert out.shape == expected_shape
    assert torch.isfinite(out).all()
    assert_state_equal(model, before)
    assert all(p.grad is None for p in model.parameters()), "taylor's backward must run on the copy"
    assert all(p.grad is None for p in pruned.parameters())

    if granularity == "channel":
        channels = graph.channels(keep)
        assert any(c < spec.out_channels for c, spec in zip(channels, graph))
        assert n_params(pruned) < n_params(model)
        assert n_params(pruned) == ParamsCost(graph).cost(keep)  # the analytic cost is exact
        for spec, n_keep in zip(graph, channels):
            assert out_width(pruned.get_submodule(spec.name)) == n_keep, spec.name
    else:
        assert n_params(pruned) == n_params(model)
        member_weights = set()
        for d, member, module in weighted_members(pruned, graph):
            numel = module.weight.numel()
            zeros = int((module.weight == 0).sum())
            assert zeros == numel - weights_kept(keep[d], numel), member
            assert not hasattr(module, "weight_mask") and not hasattr(module, "weight_orig")
            member_weights.add(f"{member}.weight")
        pruned_state = pruned.state_dict()
        for key, value in before.items():
            if key not in member_weights:
                assert torch.equal(pruned_state[key], value), f"{key} is not a pruned weight but changed"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_unbaked_weight_pruning_keeps_masks(base, name: str) -> None:
    model, x, graph = base(name)
    keep = random_keep(graph, seed=1)
    masked = prune_model(model, graph, keep, granularity="weight", bake=False)
    baked = prune_model(model, graph, keep, granularity="weight", bake=True)
    for d, member, module in weighted_members(masked, graph):
        mask = dict(module.named_buffers(recurse=False))["weight_mask"]
        assert int(mask.sum()) == weights_kept(keep[d], mask.numel()), member
        assert torch.equal(module.weight_orig, model.get_submodule(member).weight)
    with torch.no_grad():
        torch.testing.assert_close(masked(x), baked(x))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_no_layer_drops_to_zero_channels(base, name: str) -> None:
    model, x, graph = base(name)
    keep = [1e-6] * len(graph)
    assert set(graph.channels(keep)) == {1}

    narrow = prune_model(model, graph, keep)
    for spec in graph:
        assert out_width(narrow.get_submodule(spec.name)) == 1, spec.name
    sparse = prune_model(model, graph, keep, granularity="weight")
    for _, member, module in weighted_members(sparse, graph):
        assert int(module.weight.count_nonzero()) == 1, member
    with torch.no_grad():
        assert narrow(x).shape == sparse(x).shape == model(x).shape


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_keep_one_leaves_the_layer_untouched(base, name: str, granularity: str) -> None:
    model, x, graph = base(name)
    first = graph[0]
    assert first.in_channels == x.shape[1]  # fed by the image, so no other decision touches its inputs
    keep = [1.0] + [0.3] * (len(graph) - 1)

    pruned = prune_model(model, graph, keep, granularity=granularity)

    assert torch.equal(pruned.get_submodule(first.name).weight, model.get_submodule(first.name).weight)
    for member in first.members:
        module, original = pruned.get_submodule(member), model.get_submodule(member)
        if isinstance(module, _BN):
            for key, value in original.state_dict().items():
                assert torch.equal(module.state_dict()[key], value), f"{member}.{key}"
        else:
            assert out_width(module) == out_width(original)
            if granularity == "weight":
                assert torch.equal(module.weight, original.weight), member


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_random_criterion_is_seeded(base, granularity: str) -> None:
    model, _, graph = base("cnn")
    keep = [0.5] * len(graph)

    def pruned_state(seed: int) -> dict[str, Tensor]:
        return prune_model(model, graph, keep, criterion="random", granularity=granularity, seed=seed).state_dict()

    first, again, other = pruned_state(7), pruned_state(7), pruned_state(8)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert first.keys() == other.keys()
    assert all(first[k].shape == other[k].shape for k in first)  # same widths, other channels
    assert any(not torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("criterion, p", [("l1", 1), ("l2", 2)])
def test_magnitude_keeps_the_largest_filters(small_model, criterion: str, p: int) -> None:
    """Group importance sums the conv's filters, its BN scale and the next conv's input slices.

    With every BN scale equal (the default 1) and every input slice of the next conv equal, the group
    ranking is the ranking of the first conv's own filter norms, so the kept filters are the top-k.
    """
    model, x = small_model("cnn")
    with torch.no_grad():
        model.features[3].weight.fill_(0.01)
    assert torch.all(model.features[1].weight == 1)
    graph = discover(model, x)
    assert graph[0].name == "features.0" and graph[1].name == "features.3"
    n_keep = 8
    keep = [n_keep / graph[0].out_channels] + [1.0] * (len(graph) - 1)

    pruned = prune_model(model, graph, keep, criterion=criterion)

    weight = model.features[0].weight  # (32, 1, 3, 3)
    norms = weight.abs().pow(p).flatten(1).sum(1)
    top = torch.sort(torch.topk(norms, n_keep).indices).values  # pruning keeps the original order
    torch.testing.assert_close(pruned.features[0].weight, weight[top], rtol=0, atol=0)
    torch.testing.assert_close(pruned.features[3].weight, model.features[3].weight[:, top], rtol=0, atol=0)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("criterion", ["taylor", "apoz", "obd"])
def test_data_criteria_need_calibration(base, criterion: str, granularity: str) -> None:
    model, _, graph = base("cnn")
    with pytest.raises(ConfigError, match="calibration") as info:
        prune_model(model, graph, [0.5] * len(graph), criterion=criterion, granularity=granularity)
    assert repr(criterion) in str(info.value)


def test_criteria_are_registered_objects_parsed_once() -> None:
    assert criterion_names() == ("l1", "l2", "random", "taylor", "apoz", "obd")  # l1 first: the default
    for name, cls in CRITERIA.items():
        criterion = parse_criterion(name)
        assert type(criterion) is cls and isinstance(criterion, Criterion) and criterion.name == name
        assert parse_criterion(criterion) is criterion
    assert [n for n, c in CRITERIA.items() if c.needs_data] == ["taylor", "apoz", "obd"]
    with pytest.raises(ConfigError) as info:
        parse_criterion("l3")
    assert "'l3'" in str(info.value) and all(repr(n) in str(info.value) for n in CRITERIA)
    with pytest.raises(TypeError, match="'l1'"):
        type("AnotherL1", (CRITERIA["l1"],), {"name": "l1"})  # a name is taken once


def test_prune_model_takes_a_criterion_object_or_its_name(base) -> None:
    model, x, graph = base("cnn")
    keep = random_keep(graph, seed=1)
    by_name = prune_model(model, graph, keep, criterion="taylor", calibration=calibration(x)).state_dict()
    by_object = prune_model(model, graph, keep, criterion=parse_criterion("taylor"),
                            calibration=calibration(x)).state_dict()
    assert by_name.keys() == by_object.keys() and all(torch.equal(by_name[k], by_object[k]) for k in by_name)


def test_a_new_criterion_is_one_class(base, monkeypatch) -> None:
    """Defining the class is all it takes: the pruner, the registry and the policy format accept its name."""
    model, _, graph = base("cnn")
    monkeypatch.setitem(CRITERIA, "smallest-l1", None)  # removed again after the test

    class SmallestL1(Criterion):
        name = "smallest-l1"

        def channel_scores(self, group, n, stats, generator):
            return -CRITERIA["l1"]().channel_scores(group, n, stats, generator)

        def weight_scores(self, weight, stats, generator):
            return 1.0 / (weight.abs() + 1e-6)

    assert CRITERIA["smallest-l1"] is SmallestL1 and "smallest-l1" in criterion_names()
    keep = [0.5] * len(graph)
    kept_small, kept_large = {}, {}
    prune_model(model, graph, keep, criterion="smallest-l1", kept=kept_small)
    prune_model(model, graph, keep, criterion="l1", kept=kept_large)
    first = graph[0].name
    assert not set(kept_small[first]) & set(kept_large[first])  # the opposite halves
    assert Policy.from_ratios(graph, keep, criterion="smallest-l1").criterion == "smallest-l1"


# ---------------------------------------------------------------- Optimal Brain Damage on hand-built layers

class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 4)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


def _calibration(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 2, generator=g) + 0.5, torch.randint(0, 3, (n,), generator=g)


def test_obd_prunes_the_weight_without_curvature_first() -> None:
    model = TwoLayer()
    with torch.no_grad():
        model.fc1.weight.fill_(0.5)  # every weight the same magnitude: l1 cannot tell them apart
        model.fc1.bias.zero_()
    inputs, labels = _calibration()
    inputs[:, 0] = 0.0  # input 0 is always zero: the loss has no curvature along fc1.weight[:, 0]
    graph = discover(model, inputs[:1])
    pruned = prune_model(model, graph, [0.5], criterion="obd", granularity="weight",
                         calibration=(inputs, labels))
    assert torch.all(pruned.fc1.weight[:, 0] == 0)  # zero curvature: saliency 0, removed
    assert torch.all(pruned.fc1.weight[:, 1] == 0.5)  # large curvature: kept


def test_obd_prunes_dead_channels_that_magnitude_would_keep() -> None:
    model = TwoLayer()
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[2.0, 2.0], [2.0, 2.0], [0.5, 0.5], [0.5, 0.5]]))
        model.fc1.bias.copy_(torch.tensor([-100.0, -100.0, 0.0, 0.0]))  # units 0, 1 never fire
        model.fc2.weight.copy_(torch.tensor([[2.0, 2.0, 0.5, -0.5]] * 3) * torch.tensor([[1.0], [-1.0], [0.5]]))
    inputs, labels = _calibration()
    graph = discover(model, inputs[:1])
    calibration = (inputs, labels)
    by_obd = prune_model(model, graph, [0.5], criterion="obd", calibration=calibration)
    by_l1 = prune_model(model, graph, [0.5], criterion="l1")
    assert by_obd.fc1.bias.tolist() == [0.0, 0.0]  # kept the live units 2 and 3
    assert by_l1.fc1.bias.tolist() == [-100.0, -100.0]  # magnitude keeps the large, dead ones
    with torch.no_grad():
        assert torch.equal(by_obd(inputs), model(inputs))  # removing dead units changes nothing


# ---------------------------------------------------------------- the evaluator on the trained cnn


@pytest.fixture(scope="module")
def cnn_graph(trained_cnn, digits) -> LayerGraph:
    model, _ = trained_cnn
    return discover(model, digits.train.tensors[0][:1])


def test_evaluator_accuracy_cache_and_ranking(trained_cnn, cnn_graph: LayerGraph, digits) -> None:
    model, _ = trained_cnn
    before = snapshot(model)
    evaluator = PolicyEvaluator(model, cnn_graph, digits, EvalConfig())
    n = len(cnn_graph)

    full = evaluator.evaluate(Policy.from_ratios(cnn_graph, [1.0] * n))
    assert not full.cached
    assert full.accuracy >= 0.95
    assert full.key == tuple(spec.out_channels for spec in cnn_graph)

    half = evaluator.evaluate([0.5] * n)
    assert cnn_graph.channels([0.499] * n) == cnn_graph.channels([0.5] * n)
    same = evaluator.evaluate([0.499] * n)
    assert not half.cached and same.cached
    assert (same.accuracy, same.loss, same.key) == (half.accuracy, half.loss, half.key)
    assert same.seconds == 0.0

    small = evaluator.evaluate([0.3] * n)
    assert not small.cached
    assert small.accuracy < full.accuracy
    assert small.loss > full.loss
    assert_state_equal(model, before)


@pytest.mark.parametrize("criterion", ["l1", "random", "taylor"])
def test_evaluator_is_deterministic(trained_cnn, cnn_graph: LayerGraph, digits, criterion: str) -> None:
    model, _ = trained_cnn
    config = EvalConfig(criterion=criterion, seed=3)
    keep = random_keep(cnn_graph, seed=5)
    first = PolicyEvaluator(model, cnn_graph, digits, config).evaluate(keep)
    second = PolicyEvaluator(model, cnn_graph, digits, config).evaluate(keep)
    assert not first.cached and not second.cached
    assert (first.accuracy, first.loss, first.key) == (second.accuracy, second.loss, second.key)


def test_evaluator_refuses_a_policy_of_other_settings(trained_cnn, cnn_graph: LayerGraph, digits) -> None:
    model, _ = trained_cnn
    evaluator = PolicyEvaluator(model, cnn_graph, digits, EvalConfig(val_limit=16))
    policy = Policy.from_ratios(cnn_graph, [0.5] * len(cnn_graph), criterion="random")
    with pytest.raises(ConfigError, match="random"):
        evaluator.evaluate(policy)
