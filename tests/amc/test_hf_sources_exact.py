"""Hugging Face models loaded through ``hf:PATH`` as a user brings them: exact costs, pruning and export.

tests/amc/test_hf_attention.py checks the attention cost model on models wrapped by a test helper, fed
unpadded token ids. Here the ViT, BERT and Llama (grouped-query attention) classifiers are saved with
``save_pretrained`` and loaded by the product's loader (:class:`amc.models.from_hf.HFLogits`, which masks
padding), and the text models read padded ids from the text dataset: the analytic FLOPs and parameters of
20 random policies equal what FlopCounterMode and the parameter count measure, and pruned models export
with ``torch.export`` and ONNX (onnxruntime within 1e-4).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from amc.cost.analytic import FlopsCost, ParamsCost
from amc.data.datasets import load_dataset
from amc.graph.discover import discover
from amc.graph.probe import counting_flops
from amc.models import build_model
from amc.pruning.export import export_onnx, export_program
from amc.pruning.pruner import prune_model
from tests.optional import need

need("transformers")
need("tokenizers")

from tests import text_data as td


def measured(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    with counting_flops() as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops(), sum(p.numel() for p in model.parameters())


def loaded(tmp_path: Path, kind: str) -> tuple[nn.Module, torch.Tensor]:
    """The model loaded through ``hf:`` and a batch of 4 of its inputs (padded token ids or images)."""
    if kind == "vit":
        import transformers

        config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, image_size=8, patch_size=4, num_channels=1, num_labels=3)
        torch.manual_seed(0)
        transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
        model = build_model(f"hf:{tmp_path / 'vit'}", in_channels=1, num_classes=3, input_size=(8, 8))
        return model.eval(), torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    folder, path = td.text_setup(tmp_path, kind)
    data = load_dataset(f"text:{path}", kwargs={"tokenizer": str(folder), "length": 16})
    return build_model(f"hf:{folder}", in_channels=16, num_classes=3).eval(), data.val.tensors[0][:4]


@pytest.mark.parametrize("kind", ["vit", "bert", "llama"])
def test_costs_of_random_policies_are_exact_and_pruned_models_export(tmp_path: Path, kind: str) -> None:
    import onnxruntime as ort

    model, x = loaded(tmp_path, kind)
    if kind != "vit":
        assert (x == 0).any()  # padded: the mask is part of what is counted and exported
    graph = discover(model, x[:1])
    assert not graph.skipped and sum(s.pattern == "head" for s in graph.layers) == 2
    flops, params = FlopsCost(graph), ParamsCost(graph)
    assert (flops.base, params.base) == measured(model, x[:1])
    rng = random.Random(0)
    for i in range(20):
        keep = [rng.uniform(0.01, 1.0) for _ in graph.layers]
        pruned = prune_model(model, graph, keep)
        assert (flops.cost(keep), params.cost(keep)) == measured(pruned, x[:1]), keep
        with torch.no_grad():
            want = pruned(x)
        assert want.shape == (4, 3) and torch.isfinite(want).all()
        if i % 10:
            continue  # export two of the policies
        with torch.no_grad():
            program = export_program(pruned, x[:2]).module()
            torch.testing.assert_close(program(x), want, atol=1e-5, rtol=1e-4)
        onnx = export_onnx(pruned, x[:2], tmp_path / f"{kind}{i}.onnx")
        got = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
        assert np.abs(got - want.numpy()).max() < 1e-4


def test_gpt2_conv1d_projections_load_as_linear_layers_with_the_same_outputs(tmp_path: Path) -> None:
    """GPT-2's ``Conv1D`` projections become ``nn.Linear`` (Torch-Pruning and the cost model know those): the
    loaded model computes what the saved one does, its MLP widths are decisions and their costs are exact."""
    import transformers
    from transformers.pytorch_utils import Conv1D

    folder, path = td.text_setup(tmp_path, "gpt2")
    data = load_dataset(f"text:{path}", kwargs={"tokenizer": str(folder), "length": 16})
    model = build_model(f"hf:{folder}", in_channels=16, num_classes=3).eval()
    x = data.val.tensors[0][:4]
    assert (x == 0).any()
    assert not any(isinstance(m, Conv1D) for m in model.modules())
    saved = transformers.GPT2ForSequenceClassification.from_pretrained(folder).eval()
    ids = x.long()
    with torch.no_grad():
        want = saved(input_ids=ids, attention_mask=(ids != 0).long(), use_cache=False).logits
        torch.testing.assert_close(model(x), want, rtol=0, atol=1e-5)
    graph = discover(model, x[:1])
    assert [s.name for s in graph.layers] == ["inner.transformer.h.0.mlp.c_fc", "inner.transformer.h.1.mlp.c_fc"]
    flops, params = FlopsCost(graph), ParamsCost(graph)
    rng = random.Random(0)
    for _ in range(20):
        keep = [rng.uniform(0.01, 1.0) for _ in graph.layers]
        assert (flops.cost(keep), params.cost(keep)) == measured(prune_model(model, graph, keep), x[:1]), keep
