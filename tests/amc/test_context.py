"""``build_context(graph=...)``: a Ray worker gets the driver's layer graph instead of discovering it again."""

from __future__ import annotations

import dataclasses

import pytest

import amc.context
from amc.context import ContextConfig, build_context
from amc.errors import ConfigError
from amc.graph.discover import discover
from tests.conftest import build_small_model


@pytest.fixture(scope="module")
def driver(amc_cache):
    """The driver's context, and the base weights as a Ray worker receives them."""
    ctx = build_context(ContextConfig(cache_dir=str(amc_cache)), progress=False)
    return ctx, {k: v.clone() for k, v in ctx.model.state_dict().items()}


def test_a_shipped_graph_is_used_not_discovered_and_scores_the_same(driver, monkeypatch) -> None:
    ctx, state = driver

    def no_discovery(*args, **kwargs):
        raise AssertionError("the layers were discovered again")

    monkeypatch.setattr(amc.context, "discover", no_discovery)
    worker = build_context(ctx.config, progress=False, state_dict=state, graph=ctx.graph)
    assert worker.graph is ctx.graph
    for keep in ([1.0] * len(ctx.graph), [0.5] * len(ctx.graph), [0.3, 0.9, 0.6, 0.4, 1.0, 0.7]):
        assert worker.evaluator.evaluate(keep).accuracy == ctx.evaluator.evaluate(keep).accuracy


def test_a_graph_of_another_model_or_rounding_is_refused(driver) -> None:
    ctx, state = driver
    with pytest.raises(ConfigError, match="discovered with round_to=1, the config has round_to=4"):
        build_context(dataclasses.replace(ctx.config, round_to=4), progress=False, state_dict=state, graph=ctx.graph)
    model, example = build_small_model("resnet20")
    other = discover(model, example[:1])
    with pytest.raises(ConfigError, match="which the model does not have: pass the graph discovered on this model"):
        build_context(ctx.config, progress=False, state_dict=state, graph=other)
    narrower = dataclasses.replace(ctx.graph, layers=(dataclasses.replace(ctx.graph.layers[0], out_channels=7),
                                                      *ctx.graph.layers[1:]))
    first = ctx.graph.layers[0]
    with pytest.raises(ConfigError, match=f"gives {first.name!r} 7 channels, the model {first.out_channels}"):
        build_context(ctx.config, progress=False, state_dict=state, graph=narrower)
