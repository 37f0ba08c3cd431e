"""Export of pruned models: ``torch.export`` programs that load without this project's classes."""

from __future__ import annotations

import copy
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with each batch norm that follows a conv (or linear) folded into it.

    Uses ``torch.fx.experimental.optimization.fuse``: the eval-mode affine transform of the batch norm
    goes into the preceding layer's weight and bias, so a forward pass runs one operator fewer per pair
    with the same outputs (up to float rounding). At batch 1 each operator's fixed cost is a large part
    of a pruned model's time, so this lowers its latency more than the base model's. A model that
    ``torch.fx`` cannot trace is returned as an unfolded eval-mode copy, with a warning. ``model`` itself
    is not modified (nor switched to eval mode).
    """
    from torch.fx.experimental.optimization import fuse

    inference = copy.deepcopy(model).eval()
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in inference.modules()):
        return inference  # nothing to fold (ViT, ConvNeXt): no tracing, no warning
    try:
        traced = torch.fx.symbolic_trace(inference)
    except (torch.fx.proxy.TraceError, TypeError, NotImplementedError) as exc:
        # data-dependent control flow, Python math on shapes and the like: deploy the model as it is
        log.warning("batch norm not folded: torch.fx cannot trace %s (%s); the exported program keeps its "
                    "batch norms", type(model).__name__, exc)
        return inference
    return fuse(traced, inplace=True, no_trace=True)


def export_program(model: nn.Module, example: Tensor, *, fold: bool = True) -> torch.export.ExportedProgram:
    """``model`` as a ``torch.export`` program with a dynamic batch dimension (batch norm folded when ``fold``).

    The program is made from an eval-mode copy on the CPU (a model trained or pruned on a GPU exports a
    CPU program): ``model`` is not modified.
    """
    model = (fold_batchnorm(model) if fold else copy.deepcopy(model).eval()).cpu()
    example = example.cpu()
    batch = torch.export.Dim("batch", min=1, max=65536)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


def export_pt2(model: nn.Module, example: Tensor, path: str | os.PathLike, *, fold: bool = True) -> Path:
    """Saves ``model`` as a ``torch.export`` program (``.pt2``) with a dynamic batch dimension.

    With ``fold`` (the default) batch norms are folded into the layers before them first
    (:func:`fold_batchnorm`): the deployable program is an inference program. Load it with
    ``torch.export.load(path).module()``; no import of this project is needed.
    """
    program = export_program(model, example, fold=fold)
    path = Path(path)
    tmp = path.with_suffix(".tmp.pt2")
    torch.export.save(program, tmp)
    os.replace(tmp, path)
    return path


def export_onnx(model: nn.Module, example: Tensor, path: str | os.PathLike, *, opset: int = 17) -> Path:
    """Saves ``model`` as ONNX (input ``input``, output ``logits``, dynamic batch dimension).

    Uses the TorchScript-based exporter, which needs no extra package; onnxruntime runs the file.
    """
    if any(p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).cpu()  # exported from the CPU, like export_program
    model, example = model.eval(), example.cpu()
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
