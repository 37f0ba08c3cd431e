"""Top-1 accuracy and cross-entropy of a model: the one loop that every evaluation runs.

:func:`validate` measures tensors already gathered on the model's device (a search's validation subset);
:func:`accuracy` streams any dataset (a trained model's validation or test split). Both count the same
way, batch by batch, in eval mode and without gradients.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from amc.data.streaming import batches as dataset_batches
from amc.device import model_device


@torch.no_grad()
def tally(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, loss: bool = True) -> tuple[int, float]:
    """(correct top-1 predictions, summed cross-entropy) of ``model`` over ``batches`` of (inputs, labels).

    Args:
        model: Run as it is (the callers put it in eval mode).
        batches: (inputs (B, ...), labels (B,)) pairs on the model's device.
        loss: Sum the cross-entropy too (0.0 when False).
    """
    correct, total = 0, 0.0
    for x, y in batches:
        logits = model(x)  # (B, classes)
        correct += int((logits.argmax(1) == y).sum())
        if loss:
            total += float(F.cross_entropy(logits, y, reduction="sum"))
    return correct, total


def validate(model: nn.Module, inputs: Tensor, labels: Tensor, *, batch_size: int = 1024) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` in eval mode on ``inputs`` (N, ...) and ``labels`` (N,)."""
    model.eval()
    slices = ((inputs[s : s + batch_size], labels[s : s + batch_size]) for s in range(0, len(labels), batch_size))
    correct, loss = tally(model, slices)
    return correct / len(labels), loss / len(labels)


def accuracy(model: nn.Module, dataset: Dataset, *, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (in eval mode, then restored) on a dataset, on the model's device.

    A ``TensorDataset`` is sliced; any other dataset is streamed (:func:`amc.data.streaming.batches`).
    """
    was_training = model.training
    model.eval()
    try:
        correct, _ = tally(model, dataset_batches(dataset, batch_size, device=model_device(model)), loss=False)
    finally:
        model.train(was_training)
    return correct / len(dataset)


__all__ = ["accuracy", "tally", "validate"]
