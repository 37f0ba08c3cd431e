"""The evaluator's fast paths (issue 33) against the computation they replace, on 10 random policies.

``EvalConfig(reuse_base=True)`` (the default) measures the criterion's statistics and traces the
Torch-Pruning graph once per evaluator (:class:`~amc.pruning.pruner.Pruner`), keeps the base model's
outputs for ``reconstruct`` and refits in one pass; ``reuse_base=False`` is the old path, candidate by
candidate. Both must keep the same channels and score the same accuracy.
"""

from __future__ import annotations

import random

import pytest
import torch

from amc.evaluation import reconstruct as rec
from amc.evaluation.evaluator import EvalConfig, PolicyEvaluator
from amc.graph.discover import discover
from amc.pruning.pruner import Pruner, prune_model
from tests.conftest import build_small_model

POLICIES = 10


@pytest.fixture(scope="module")
def models(trained_cnn, digits):
    """name -> (model, graph): the trained digits cnn and a seeded resnet20 (residual groups) on 8x8 digits."""
    cnn, _ = trained_cnn
    torch.manual_seed(0)
    from amc.models import build_model

    resnet = build_model("resnet20", in_channels=1, num_classes=10).eval()
    example = digits.val.tensors[0][:1]
    return {"cnn": (cnn, discover(cnn, example)), "resnet20": (resnet, discover(resnet, example))}


def _policies(graph, seed: int = 0) -> list[list[float]]:
    rng = random.Random(seed)
    return [[rng.uniform(0.2, 1.0) for _ in graph.layers] for _ in range(POLICIES)]


@pytest.mark.parametrize("name", ["cnn", "resnet20"])
@pytest.mark.parametrize("criterion", ["l1", "taylor", "apoz", "obd", "random"])
def test_the_pruner_removes_the_channels_prune_model_removes(models, digits, name: str, criterion: str) -> None:
    model, graph = models[name]
    calibration = (digits.train.tensors[0][:64], digits.train.tensors[1][:64])
    pruner = Pruner(model, graph, criterion=criterion, calibration=calibration)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad for p in model.parameters()]
    for keep in _policies(graph):
        old_kept: dict[str, list[int]] = {}
        new_kept: dict[str, list[int]] = {}
        old = prune_model(model, graph, keep, criterion=criterion, calibration=calibration, seed=3, kept=old_kept)
        new = pruner.prune(keep, seed=3, kept=new_kept)
        assert new_kept == old_kept
        old_state, new_state = old.state_dict(), new.state_dict()
        assert old_state.keys() == new_state.keys()
        assert all(torch.equal(old_state[k], new_state[k]) for k in old_state)
        assert all(p.grad is None for p in new.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the base is untouched
    assert all(p.grad is g for p, g in zip(model.parameters(), grads))


@pytest.mark.parametrize("criterion", ["taylor", "obd", "apoz"])
def test_weight_granularity_prunes_the_same_weights(models, digits, criterion: str) -> None:
    model, graph = models["cnn"]
    calibration = (digits.train.tensors[0][:64], digits.train.tensors[1][:64])
    pruner = Pruner(model, graph, criterion=criterion, granularity="weight", calibration=calibration)
    for keep in _policies(graph)[:3]:
        old = prune_model(model, graph, keep, criterion=criterion, granularity="weight", calibration=calibration)
        new = pruner.prune(keep)
        assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))


@pytest.mark.parametrize("name,score,criterion", [
    ("cnn", "reconstruct", "l1"), ("resnet20", "reconstruct", "l1"),
    ("cnn", "bn", "taylor"), ("cnn", "bn", "obd"), ("cnn", "bn", "apoz"),
])
def test_the_fast_evaluator_scores_as_the_old_one(models, digits, name: str, score: str, criterion: str) -> None:
    model, graph = models[name]

    def evaluator(reuse: bool) -> PolicyEvaluator:
        config = EvalConfig(score=score, criterion=criterion, reuse_base=reuse, bn_batches=2, bn_batch_size=64,
                            calibration_size=64, reconstruct_images=20, cache=False)
        return PolicyEvaluator(model, graph, digits, config)

    fast, old = evaluator(True), evaluator(False)
    for keep in _policies(graph, seed=1):
        new_kept: dict[str, list[int]] = {}
        old_kept: dict[str, list[int]] = {}
        new_model, old_model = fast._pruned(keep, new_kept), old._pruned(keep, old_kept)
        assert new_kept == old_kept
        a, b = fast.score(new_model, new_kept), old.score(old_model, old_kept)
        assert abs(a[0] - b[0]) <= 1e-6 and abs(a[1] - b[1]) <= 1e-5, (a, b)
        assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(new_model.state_dict().values(),
                                                                   old_model.state_dict().values()))


def test_one_pass_refits_out_of_order_targets_as_one_pass_each(models, digits) -> None:
    """Targets listed out of forward order: the pass refits the in-order prefix, the rest one pass each."""
    model, graph = models["resnet20"]
    kept: dict[str, list[int]] = {}
    pruned = prune_model(model, graph, [0.5] * len(graph), kept=kept)
    targets = rec.reconstruction_targets(graph, kept, pruned)
    names = list(targets)
    assert len(names) >= 4
    names[1], names[2] = names[2], names[1]  # the second target now runs before the first-listed one
    swapped = {n: targets[n] for n in names}
    images = digits.train.tensors[0][:20]
    results = []
    for one_pass in (True, False):
        copy = prune_model(model, graph, [0.5] * len(graph))
        done = rec.reconstruct(copy, model, swapped, images, points=50, one_pass=one_pass)
        assert done == names
        results.append(copy.state_dict())
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_base_outputs_are_the_base_models_outputs_kept_or_not(models, digits, monkeypatch) -> None:
    model, graph = models["cnn"]
    images = digits.train.tensors[0][:10]
    names = [m.name for m in graph.modules if m.type in ("conv", "linear")]
    expected = rec._outputs(model, names, images)
    kept = rec.BaseOutputs(model, images)
    assert all(torch.equal(kept.get(names)[n], expected[n]) for n in names)
    assert kept._kept.keys() == set(names)  # kept for the next candidate
    monkeypatch.setattr(rec, "BASE_OUTPUT_BYTES", 0)
    unkept = rec.BaseOutputs(model, images)
    assert all(torch.equal(unkept.get(names[:2])[n], expected[n]) for n in names[:2])
    assert not unkept._kept


def _modern() -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    from tests.amc.modern_models import ConvNeXtNet, ResNeXtNet, WindowAttentionNet, vit_small

    torch.manual_seed(0)
    image = torch.randn(2, 3, 8, 8)
    models = {"vit": vit_small(), "window": WindowAttentionNet(), "convnext": ConvNeXtNet(), "resnext": ResNeXtNet()}
    return {name: (model.eval(), image) for name, model in models.items()}


@pytest.mark.parametrize("name", ["mobilenetv2", "resnet56", "vit", "window", "convnext", "resnext"])
def test_the_copied_graph_prunes_every_structure_as_a_traced_one(name: str) -> None:
    """Heads, depthwise and grouped convs, unwrapped parameters: the graph copied with the model prunes them
    as a graph traced on the copy does."""
    model, x = build_small_model(name) if name in ("mobilenetv2", "resnet56") else _modern()[name]
    graph = discover(model, x[:1])
    pruner = Pruner(model, graph)
    for keep in _policies(graph)[:3]:
        old_kept: dict[str, list[int]] = {}
        new_kept: dict[str, list[int]] = {}
        old = prune_model(model, graph, keep, kept=old_kept)
        new = pruner.prune(keep, kept=new_kept)
        assert new_kept == old_kept
        assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))
        assert torch.equal(old(x), new(x))
