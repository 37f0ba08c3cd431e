"""Candidate scores (bn, reconstruct, finetune:K[+kd]) on the digits cnn: what each one buys, and its contract."""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from amc.cost.analytic import FlopsCost
from amc.errors import ConfigError
from amc.evaluation.evaluator import EvalConfig, PolicyEvaluator
from amc.graph.discover import discover
from amc.pruning.pruner import prune_model
from amc.evaluation.reconstruct import _inputs, _outputs, reconstruct, reconstruction_targets
from amc.evaluation import scores
from amc.evaluation.scores import SCORE_CHOICES, Finetune, Score
from envs import BudgetProjector
from tests.conftest import build_small_model


def _uniform(graph, budget: float) -> list[float]:
    """The largest uniform keep ratio meeting ``budget`` (the uniform baseline), by bisection."""
    projector = BudgetProjector(FlopsCost(graph), budget)
    lo, hi = projector.min_keep, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if projector.feasible([mid] * len(graph)) else (lo, mid)
    return [lo] * len(graph)


@pytest.fixture(scope="module")
def setup(trained_cnn, digits):
    model, _ = trained_cnn
    graph = discover(model, digits.val.tensors[0][:1])
    return model, graph, digits


def _evaluator(setup, score: str) -> PolicyEvaluator:
    model, graph, digits = setup
    return PolicyEvaluator(model, graph, digits, EvalConfig(score=score))


def test_reconstruct_raises_the_uniform_policy_over_bn_at_budget_0_2(setup) -> None:
    _, graph, _ = setup
    keep = _uniform(graph, 0.2)
    bn = _evaluator(setup, "bn").evaluate(keep).accuracy
    rebuilt = _evaluator(setup, "reconstruct").evaluate(keep).accuracy
    assert rebuilt > bn + 0.02, (bn, rebuilt)


@pytest.mark.parametrize("score", ["bn", "reconstruct", "finetune:3"])
def test_the_scored_model_is_the_one_the_score_measured(setup, score: str) -> None:
    """What a search exports and reports the test accuracy of: its validation accuracy is the score's, so
    with reconstruct the refitted weights, not the merely pruned ones (which score far lower at 0.2)."""
    from amc.evaluation.metrics import validate

    _, graph, digits = setup
    evaluator = _evaluator(setup, score)
    keep = _uniform(graph, 0.2)
    model = evaluator.scored_model(keep)
    assert not model.training
    accuracy, _ = validate(model, *digits.val.tensors, batch_size=evaluator.config.batch_size)
    assert accuracy == evaluator.evaluate(keep).accuracy
    if score == "reconstruct":
        merely_pruned, _ = validate(evaluator.prune(keep), *digits.val.tensors, batch_size=evaluator.config.batch_size)
        assert accuracy > merely_pruned + 0.02, (merely_pruned, accuracy)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reconstruct_lowers_each_refitted_layer_s_error_against_the_base(seed) -> None:
    """The ridge fit towards the current weights can only lower the squared error on its samples, whatever
    the weights: checked on random-weight models."""
    model, x = build_small_model("cnn", seed=seed, batch=32)
    graph = discover(model, x[:1])
    keep = [0.5] * len(graph)
    kept: dict[str, list[int]] = {}
    pruned = prune_model(model, graph, keep, kept=kept)
    targets = reconstruction_targets(graph, kept, pruned)
    # Every layer whose inputs lost channels (all but the first conv: every decision is pruned here).
    assert set(targets) == {r.name for r in graph.modules if r.type in ("conv", "linear") and r.in_deps}
    assert len(targets) == len([r for r in graph.modules if r.type in ("conv", "linear")]) - 1

    @torch.no_grad()
    def errors(net: nn.Module) -> dict[str, float]:
        base_out = _outputs(model, list(targets), x)
        out = {}
        for name, outputs in targets.items():
            layer = net.get_submodule(name)
            y = layer(_inputs(net, name, x))
            wanted = base_out[name] if outputs is None else base_out[name][:, outputs]
            out[name] = float((y - wanted).pow(2).mean())
        return out

    first = next(iter(targets))
    before = errors(pruned)
    done = reconstruct(pruned, model, targets, x, points=200, seed=seed)
    assert done == list(targets)
    after = errors(pruned)
    # The first target's inputs are the same before and after (nothing before it was refitted).
    assert after[first] < before[first]
    assert sum(after.values()) < sum(before.values())


def test_finetune_leaves_the_base_untouched_and_repeats_exactly(setup) -> None:
    model, graph, _ = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    keep = _uniform(graph, 0.3)
    first = _evaluator(setup, "finetune:8").evaluate(keep)
    second = _evaluator(setup, "finetune:8").evaluate(keep)
    assert (first.accuracy, first.loss) == (second.accuracy, second.loss)  # same seed, same batches
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    bn = _evaluator(setup, "bn").evaluate(keep)
    assert first.loss < bn.loss  # the steps trained the pruned copy
    distilled = _evaluator(setup, "finetune:8+kd").evaluate(keep)
    assert distilled.loss != first.loss  # +kd trains on the base model's logits too
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("text", ["finetune", "finetune:0", "finetune:x", "bn+kd", "recon", "finetune:3+k"])
def test_a_bad_score_is_one_line_listing_the_choices(text) -> None:
    with pytest.raises(ConfigError) as caught:
        EvalConfig(score=text)
    message = str(caught.value)
    assert "\n" not in message and repr(text) in message and all(c in message for c in SCORE_CHOICES)


def test_scores_parse_to_a_canonical_spelling() -> None:
    assert Score.parse("finetune:20+kd") == Finetune(steps=20, distill=True)
    assert str(Score.parse("finetune:020")) == "finetune:20"
    assert EvalConfig(score="reconstruct").score == "reconstruct"
    with pytest.raises(ConfigError, match="granularity channel"):
        EvalConfig(score="reconstruct", granularity="weight")


@pytest.mark.parametrize("choice", scores.score_choices())
def test_every_score_spells_itself_back_and_travels_by_pickle(choice: str) -> None:
    """The contract every registered score keeps: ``str`` gives the spelling ``parse`` read (the one
    history.csv and policy.json record), and it pickles (Ray workers receive it)."""
    text = choice.replace("K", "3")
    score = Score.parse(text)
    assert isinstance(score, Score) and str(score) == text
    assert Score.parse(score) is score and Score.parse(str(score)) == score
    assert pickle.loads(pickle.dumps(score)) == score
    assert EvalConfig(score=score).score == EvalConfig(score=text).score == text


def test_a_new_score_is_one_subclass(setup, monkeypatch) -> None:
    """Defining a subclass registers it: the config, the choices and the evaluator take it, nothing else changes.
    A score that zeroes every weight leaves the logits equal: the loss is ln(10), every prediction class 0."""
    monkeypatch.setattr(scores, "_REGISTRY", dict(scores._REGISTRY))  # the class below is this test's only

    @dataclass(frozen=True)
    class Zeroed(Score):
        name = "zeroed"

        def refine(self, pruned, kept, inputs, prepared) -> None:
            with torch.no_grad():
                for p in pruned.parameters():
                    p.zero_()

    assert "zeroed" in scores.SCORE_CHOICES and Score.parse("zeroed") == Zeroed()
    with pytest.raises(ConfigError, match="granularity channel"):
        EvalConfig(score="zeroed", granularity="weight")
    model, graph, digits = setup
    result = PolicyEvaluator(model, graph, digits, EvalConfig(score="zeroed")).evaluate([0.5] * len(graph))
    labels = digits.val.tensors[1]
    assert result.loss == pytest.approx(math.log(10), abs=1e-6)
    assert result.accuracy == pytest.approx(float((labels == 0).float().mean()))
