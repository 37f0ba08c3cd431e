"""Tests for amc.pruning.policy: JSON round trip, strict loading, and refusing a policy of another model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from amc.errors import PolicyError
from amc.graph.discover import LayerGraph, discover
from amc.models import build_model
from amc.pruning.policy import FORMAT, Policy


@pytest.fixture(scope="module")
def graph(small_model) -> LayerGraph:
    model, x = small_model("cnn")
    return discover(model, x)


@pytest.fixture
def policy(graph: LayerGraph) -> Policy:
    ratios = [0.25, 0.5, 0.75, 1.0, 0.3, 0.9][: len(graph)]
    return Policy.from_ratios(graph, ratios, criterion="l2", resource="params", budget=0.5,
                              metrics={"val_accuracy": 0.93, "cost_ratio": 0.48}, meta={"strategy": "ddpg", "seed": 3})


def policy_dict(policy: Policy) -> dict:
    return json.loads(policy.to_json())


def test_json_round_trip(policy: Policy, tmp_path: Path) -> None:
    assert Policy.from_json(policy.to_json()) == policy
    path = policy.save(tmp_path / "policy.json")
    assert Policy.load(path) == policy
    assert json.loads(path.read_text())["format"] == FORMAT


def test_from_ratios_fills_channels_and_fingerprint(graph: LayerGraph, policy: Policy) -> None:
    ratios = [0.25, 0.5, 0.75, 1.0, 0.3, 0.9][: len(graph)]
    assert tuple(policy.keep) == graph.names
    assert tuple(policy.channels.values()) == graph.channels(ratios)
    assert dict(policy.channels)["features.0"] == 8  # 0.25 * 32
    assert policy.model_fingerprint == graph.fingerprint
    assert policy.ratios(graph) == ratios


def test_ratios_follow_graph_order(graph: LayerGraph, policy: Policy) -> None:
    data = policy_dict(policy)
    data["keep"] = dict(reversed(list(data["keep"].items())))
    assert Policy.from_dict(data).ratios(graph) == policy.ratios(graph)


def test_policy_copies_its_inputs(graph: LayerGraph) -> None:
    keep = {name: 0.5 for name in graph.names}
    policy = Policy(keep=keep, metrics={"val_accuracy": 0.93})
    keep["features.0"] = 0.1
    assert policy.keep["features.0"] == 0.5
    richer = policy.with_metrics(val_accuracy=0.5).with_meta(note="x")
    assert richer.metrics["val_accuracy"] == 0.5 and richer.meta["note"] == "x"
    assert policy.metrics["val_accuracy"] == 0.93 and "note" not in policy.meta
    assert richer.keep == policy.keep


def test_not_json() -> None:
    with pytest.raises(PolicyError, match="not valid JSON"):
        Policy.from_json('{"format": "amc-policy/1", ')


def test_not_an_object() -> None:
    with pytest.raises(PolicyError, match="JSON object, got list"):
        Policy.from_json("[1, 2]")


def test_wrong_format(policy: Policy) -> None:
    data = policy_dict(policy)
    data["format"] = "amc-policy/3"
    with pytest.raises(PolicyError, match=r"'format' must be 'amc-policy/2' \(or 'amc-policy/1'\), got 'amc-policy/3'"):
        Policy.from_dict(data)


@pytest.mark.parametrize("field", ["model_fingerprint", "granularity", "criterion", "resource", "budget", "keep"])
def test_missing_field(policy: Policy, field: str) -> None:
    data = policy_dict(policy)
    del data[field]
    with pytest.raises(PolicyError, match=rf"misses field\(s\) \['{field}'\]"):
        Policy.from_json(json.dumps(data))


def test_unknown_field(policy: Policy) -> None:
    data = policy_dict(policy)
    data["keep_ratio"] = 0.5
    with pytest.raises(PolicyError, match=r"unknown field\(s\) \['keep_ratio'\]; remove them"):
        Policy.from_json(json.dumps(data))


@pytest.mark.parametrize("bad", [0, 1.5, -1, "0.5", True, None])
def test_keep_value_out_of_range(policy: Policy, bad: object) -> None:
    data = policy_dict(policy)
    data["keep"]["features.3"] = bad
    with pytest.raises(PolicyError) as info:
        Policy.from_json(json.dumps(data))
    assert "'keep.features.3'" in str(info.value)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("field, bad", [("budget", 0.0), ("budget", 2), ("granularity", "filter")])
def test_other_value_out_of_range(policy: Policy, field: str, bad: object) -> None:
    data = policy_dict(policy)
    data[field] = bad
    with pytest.raises(PolicyError, match=f"'{field}'"):
        Policy.from_dict(data)


def test_keep_must_be_an_object(policy: Policy) -> None:
    data = policy_dict(policy)
    data["keep"] = [0.5, 0.5]
    with pytest.raises(PolicyError, match="'keep' must be a JSON object"):
        Policy.from_dict(data)


def test_empty_keep() -> None:
    with pytest.raises(PolicyError, match="'keep' is empty"):
        Policy(keep={})


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        Policy.load(tmp_path / "policy.json")


def test_refuses_another_model(policy: Policy) -> None:
    """A narrower cnn has the same layer names but another fingerprint."""
    other = build_model("cnn", in_channels=1, num_classes=10, width=16)
    other_graph = discover(other, torch.zeros(1, 1, 8, 8))
    assert other_graph.names == tuple(policy.keep)
    with pytest.raises(PolicyError, match="fingerprint") as info:
        policy.ratios(other_graph)
    assert policy.model_fingerprint in str(info.value) and other_graph.fingerprint in str(info.value)


def test_missing_layer(graph: LayerGraph, policy: Policy) -> None:
    data = policy_dict(policy)
    del data["keep"]["features.7"]
    with pytest.raises(PolicyError, match=r"missing layers \['features\.7'\]"):
        Policy.from_dict(data).ratios(graph)


def test_unknown_layer(graph: LayerGraph, policy: Policy) -> None:
    data = policy_dict(policy)
    data["keep"]["features.99"] = 0.5
    with pytest.raises(PolicyError, match=r"unknown layers \['features\.99'\]"):
        Policy.from_dict(data).ratios(graph)
