"""Export of pruned models: ``torch.export`` programs that load without this project's classes."""

from __future__ import annotations

import os
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
