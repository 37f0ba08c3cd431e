"""Sparsity applied to tiny Llama and GPT-2 models (amc.sparsity.apply) and exported (amc.sparsity.export):
per-layer counts exactly as decided (counted from the weights), N:M patterns, restore, round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from amc.errors import ConfigError
from amc.sparsity import (
    NM,
    SparsityBudget,
    calibrate,
    dense_weights,
    discover_sparse,
    masked_per_layer,
    restore,
    sparsify,
    sparsify_sequential,
    zeros_per_layer,
)
from amc.sparsity.export import export_onnx_lm, onnx_max_error, save_sparse_pretrained
from tests.amc.test_sparsity_layers import tiny_gpt2, tiny_llama, token_batches

BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


def rows_of(model, layer) -> torch.Tensor:
    weight = model.get_submodule(layer.name).weight.detach()
    return weight.t() if layer.transposed else weight  # (out, in)


@pytest.fixture(scope="module")
def calibrated():
    out = {}
    for name, build in BUILDERS.items():
        model = build()
        out[name] = model, calibrate(model, discover_sparse(model), token_batches(), hessian=True)
    return out


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("arch, per", [("llama", "block"), ("llama", "layer"), ("gpt2", "layer")])
def test_each_layer_loses_exactly_the_decided_weights(calibrated, arch: str, per: str, criterion: str) -> None:
    model, stats = calibrated[arch]
    layout = discover_sparse(model, per=per)
    budget = SparsityBudget(layout, budget=0.4, max_sparsity=0.9)
    decided = budget.project(np.random.default_rng(1).uniform(0.3, 0.9, len(layout.units)).tolist())
    dense = dense_weights(model, layout)
    try:
        plan = sparsify(model, layout, decided, criterion=criterion, stats=stats)
        zeros, masked = zeros_per_layer(model, layout), masked_per_layer(model, layout)
        unit_of = layout.unit_of()
        sparsity = dict(zip([u.name for u in layout.units], decided))
        for layer in layout.layers:
            assert zeros[layer.name] == masked[layer.name] == plan.removed(layer)
            assert abs(zeros[layer.name] - sparsity[unit_of[layer.name]] * layer.numel) < 1
        assert sum(zeros.values()) == round(0.6 * layout.total)
    finally:
        restore(model, layout, dense)
    assert all(torch.equal(model.get_submodule(n).weight, w) for n, w in dense.items())
    assert not any(hasattr(model.get_submodule(n), "weight_mask") for n in dense)


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_nm_levels_per_layer_have_their_pattern_in_the_weights(calibrated, arch: str, criterion: str) -> None:
    model, stats = calibrated[arch]
    layout = discover_sparse(model, per="layer")
    levels = [("dense", "2:4", "1:4", "4:8")[i % 4] for i in range(len(layout.units))]
    dense = dense_weights(model, layout)
    try:
        sparsify(model, layout, levels, criterion=criterion, stats=stats)
        for layer, text in zip(layout.layers, levels):
            nonzero = rows_of(model, layer) != 0
            if text == "dense":
                assert bool(nonzero.all())
                continue
            keep, group = map(int, text.split(":"))
            per_group = nonzero.reshape(layer.out_features, -1, group).sum(-1)
            assert bool((per_group == keep).all()), layer.name
    finally:
        restore(model, layout, dense)


def test_sparsegpt_reconstructs_each_layer_better_than_magnitude(calibrated) -> None:
    model, stats = calibrated["llama"]
    layout = discover_sparse(model)
    inputs: dict[str, torch.Tensor] = {}

    def keep_input(name: str):
        def hook(module, inp, out) -> None:  # None: the module's output stays as it is
            inputs[name] = inp[0].reshape(-1, inp[0].shape[-1])
        return hook

    hooks = [model.get_submodule(x.name).register_forward_hook(keep_input(x.name)) for x in layout.layers]
    with torch.no_grad():
        model(token_batches(1)[0])
    for hook in hooks:
        hook.remove()
    dense = dense_weights(model, layout)
    errors = {}
    for criterion in ("magnitude", "sparsegpt"):
        sparsify(model, layout, [0.6, 0.6], criterion=criterion, stats=stats)
        errors[criterion] = {x.name: float(((inputs[x.name] @ (dense[x.name] - model.get_submodule(x.name).weight).t())
                                            ** 2).sum()) for x in layout.layers}
        restore(model, layout, dense)
    assert all(errors["sparsegpt"][n] < errors["magnitude"][n] for n in errors["magnitude"]), errors


def test_pruning_twice_or_without_statistics_is_refused(calibrated) -> None:
    model, _ = calibrated["gpt2"]
    layout = discover_sparse(model)
    no_hessians = calibrate(model, layout, token_batches(1))
    with pytest.raises(ConfigError, match="needs calibration statistics"):
        sparsify(model, layout, [0.5, 0.5], criterion="wanda")
    with pytest.raises(ConfigError, match="hessian=True"):
        sparsify(model, layout, [0.5, 0.5], criterion="sparsegpt", stats=no_hessians)
    with pytest.raises(ConfigError, match="unknown sparsity criterion"):
        sparsify(model, layout, [0.5, 0.5], criterion="obs")
    with pytest.raises(ConfigError, match="not a mix"):
        sparsify(model, layout, [0.5, NM(2, 4)], criterion="magnitude")
    dense = dense_weights(model, layout)
    sparsify(model, layout, [0.5, 0.5], criterion="magnitude")
    try:
        with pytest.raises(ConfigError, match="restore"):
            sparsify(model, layout, [0.5, 0.5], criterion="magnitude")
    finally:
        restore(model, layout, dense)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("arch, converted", [("llama", False), ("gpt2", False), ("gpt2", True)])
def test_a_saved_sparse_model_loads_back_with_equal_logits(arch: str, converted: bool, tmp_path: Path) -> None:
    from amc.models.from_hf import conv1d_as_linear

    model = BUILDERS[arch]()
    if converted:  # as the hf: loader hands GPT-2 over: Conv1D projections as nn.Linear
        conv1d_as_linear(model)
    layout = discover_sparse(model)
    stats = calibrate(model, layout, token_batches(), hessian=True)
    sparsify(model, layout, SparsityBudget(layout, budget=0.3).project([0.8, 0.6]), criterion="sparsegpt", stats=stats)
    ids = token_batches(1, seed=3)[0]
    want = _logits(model, ids)
    folder = save_sparse_pretrained(model, layout, tmp_path / "sparse")
    back = type(model).from_pretrained(folder, local_files_only=True).eval()
    torch.testing.assert_close(_logits(back, ids), want, atol=1e-5, rtol=1e-5)
    back_layout = discover_sparse(back)
    assert [x.transposed for x in back_layout.layers] == [arch == "gpt2"] * len(layout.layers)  # GPT-2's Conv1D again
    assert zeros_per_layer(back, back_layout) == masked_per_layer(model, layout)
    assert hasattr(model.get_submodule(layout.layers[0].name), "weight_mask")  # the model kept its masks


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_two_of_four_exports_to_onnx_that_onnxruntime_runs_alike(arch: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    model = BUILDERS[arch]()
    layout = discover_sparse(model)
    stats = calibrate(model, layout, token_batches())
    sparsify(model, layout, ["2:4", "2:4"], criterion="wanda", stats=stats)
    path = export_onnx_lm(model, layout, token_batches(1)[0], tmp_path / "sparse.onnx")
    other = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(5))  # another batch and length
    assert onnx_max_error(path, model, other) < 1e-4


def test_sequential_pruning_calibrates_each_block_on_the_pruned_blocks_before_it() -> None:
    model = tiny_llama()
    layout = discover_sparse(model)
    batches = token_batches()
    dense = dense_weights(model, layout)
    one_pass = calibrate(model, layout, batches, hessian=True)
    sparsify(model, layout, [0.5, 0.7], criterion="sparsegpt", stats=one_pass)
    at_once = {x.name: model.get_submodule(x.name).weight.detach().clone() for x in layout.layers}
    restore(model, layout, dense)
    plan = sparsify_sequential(model, layout, [0.5, 0.7], batches=batches, criterion="sparsegpt")
    for layer in layout.layers:
        weight = model.get_submodule(layer.name).weight
        assert int((weight == 0).sum()) == plan.removed(layer)
        if layer.block == "model.layers.0":  # the first block sees the same inputs either way
            torch.testing.assert_close(weight, at_once[layer.name])
    assert not torch.equal(model.get_submodule("model.layers.1.mlp.down_proj").weight,
                           at_once["model.layers.1.mlp.down_proj"])
