"""A sparse language model exported: a Hugging Face folder with the zeros baked in, and ONNX.

:func:`save_sparse_pretrained` writes ``save_pretrained`` output that ``transformers`` loads back as it
loads any checkpoint (the zeros are ordinary weights). A GPT-2 whose ``Conv1D`` projections were converted
to ``nn.Linear`` (:func:`amc.models.from_hf.conv1d_as_linear`) is converted back first, on a copy, so the
folder has GPT-2's own layout. :func:`export_onnx_lm` writes the model as ONNX (input ``input_ids`` int64
``(B, T)``, output ``logits``); an N:M model's ONNX holds its zeros as dense tensors (ONNX has no 2:4 type:
a runtime with sparse kernels reads the pattern from the weights).
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from amc.errors import ModelError
from amc.sparsity.apply import bake
from amc.sparsity.layers import SparsityLayout, conv1d_type


def pretrained_of(model: nn.Module) -> nn.Module:
    """The ``transformers`` model inside ``model``: itself, or the first submodule that is a ``PreTrainedModel``
    (a wrapper such as :class:`~amc.models.hf_causal.CausalLMLogits` forwards ``save_pretrained`` but is none)."""
    found = next((m for m in model.modules() if _is_pretrained(m)), None)
    if found is None:
        raise ModelError(f"{type(model).__name__} holds no transformers model (no PreTrainedModel inside): "
                         "export it with export_onnx_lm instead")
    return found


def _is_pretrained(module: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(module, PreTrainedModel)


def _logits_program(model: nn.Module) -> nn.Module:
    """``model`` as ``forward(input_ids) -> logits``: a ``transformers`` causal LM (bare, or inside the ``hf:``
    loader's :class:`~amc.models.hf_causal.CausalLMLogits`) through :class:`_Logits`; any other model as it is."""
    from amc.models.hf_causal import CausalLMLogits

    inner = model.inner if isinstance(model, CausalLMLogits) else model
    return _Logits(inner) if _is_pretrained(inner) else model


def linear_as_conv1d(model: nn.Module) -> nn.Module:
    """The inverse of ``conv1d_as_linear``: every ``nn.Linear`` that the model's architecture builds as a
    ``Conv1D`` (found on a weightless skeleton of the same config) becomes that ``Conv1D`` again, in place."""
    conv1d = conv1d_type()
    if conv1d is None:
        return model
    with torch.device("meta"):
        skeleton = type(model)(copy.deepcopy(model.config))
    built = {name for name, module in skeleton.named_modules() if isinstance(module, conv1d)}
    for name, module in list(model.named_modules()):
        if name in built and isinstance(module, nn.Linear):
            layer = conv1d(module.out_features, module.in_features)
            layer = layer.to(device=module.weight.device, dtype=module.weight.dtype)
            with torch.no_grad():
                layer.weight.copy_(module.weight.t())
                if module.bias is not None:
                    layer.bias.copy_(module.bias)
            model.set_submodule(name, layer)
    return model


def save_sparse_pretrained(model: nn.Module, layout: SparsityLayout, path: str | os.PathLike, *,
                           tokenizer: object | None = None) -> Path:
    """Writes a copy of ``model`` with its masks baked in as a ``save_pretrained`` folder (and ``tokenizer``).

    The model itself is left as it is (masks and all). Returns the folder.
    """
    folder = Path(path)
    hf = pretrained_of(bake(copy.deepcopy(model), layout))
    linear_as_conv1d(hf)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Writing model shards" bars: the caller reports what runs
    try:
        hf.save_pretrained(folder)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


class _Logits(nn.Module):
    """``inner(input_ids=ids, attention_mask=1, use_cache=False).logits``: a causal LM as a one-tensor function.

    The all-ones mask is explicit because without one ``transformers`` looks for packed sequences in the
    position ids (``torch.diff``, which the ONNX exporter lacks); it changes nothing in the logits."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.inner(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits


def export_onnx_lm(model: nn.Module, layout: SparsityLayout, example: Tensor, path: str | os.PathLike, *,
                   opset: int = 17) -> Path:
    """Saves a copy of ``model`` (masks baked) as ONNX: input ``input_ids`` ``(B, T)`` int64 (dynamic batch and
    length), output ``logits``. A ``transformers`` causal LM is called with ``input_ids``; any other module
    with ``forward(ids) -> logits``. Uses the TorchScript-based exporter (no onnxscript needed)."""
    baked = bake(copy.deepcopy(model), layout).cpu().eval()
    program = _logits_program(baked)
    path = Path(path)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript tracer warnings on transformers' shape checks
        torch.onnx.export(program, (example.cpu(),), str(tmp), input_names=["input_ids"], output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "logits": {0: "batch", 1: "tokens"}},
                          opset_version=opset, dynamo=False)
    os.replace(tmp, path)
    return path


def onnx_max_error(path: str | os.PathLike, model: nn.Module, ids: Tensor) -> float:
    """The largest absolute difference between onnxruntime's logits for ``ids`` and ``model``'s."""
    import numpy as np
    import onnxruntime as ort

    program = _logits_program(model)
    with torch.no_grad():
        want = program(ids).float().cpu().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": ids.cpu().numpy().astype(np.int64)})[0]
    return float(np.abs(got - want).max())
