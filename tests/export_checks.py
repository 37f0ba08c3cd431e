"""One check shared by the model tests: a pruned model exports with ``torch.export`` and ONNX, and both agree
with it (the program within 1e-5, onnxruntime within 1e-4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from amc.pruning.export import export_onnx, export_program


def assert_exports(pruned: nn.Module, example: torch.Tensor, batch: torch.Tensor, folder: Path) -> None:
    """``pruned`` exported on ``example`` computes on ``batch`` what it does (another batch size than the example's)."""
    import onnxruntime as ort

    with torch.no_grad():
        want = pruned(batch)
        program = export_program(pruned, example).module()
        torch.testing.assert_close(program(batch), want, atol=1e-5, rtol=1e-4)
    path = export_onnx(pruned, example, folder / "m.onnx")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": batch.numpy()})[0]
    assert np.abs(got - want.numpy()).max() < 1e-4
