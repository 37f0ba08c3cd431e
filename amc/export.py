"""Export of pruned models: ``torch.export`` programs that load without this project's classes."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn


def export_pt2(model: nn.Module, example: Tensor, path: str | os.PathLike) -> Path:
    """Saves ``model`` as a ``torch.export`` program (``.pt2``) with a dynamic batch dimension.

    Load it with ``torch.export.load(path).module()``; no import of this project is needed.
    """
    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    path = Path(path)
    tmp = path.with_suffix(".tmp.pt2")
    torch.export.save(program, tmp)
    os.replace(tmp, path)
    return path


def export_onnx(model: nn.Module, example: Tensor, path: str | os.PathLike, *, opset: int = 17) -> Path:
    """Saves ``model`` as ONNX (input ``input``, output ``logits``, dynamic batch dimension).

    Uses the TorchScript-based exporter, which needs no extra package; onnxruntime runs the file.
    """
    model = model.eval()
    path = Path(path)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        # Deliberate: the torch.export-based exporter needs the onnxscript package; this one does not.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (example,), str(tmp), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    os.replace(tmp, path)
    return path
