"""A few seeded SGD steps on a pruned copy: the numerics of the ``finetune:K[+kd]`` candidate score.

Every candidate trains on the same ``K * 64`` seeded training samples with the same seed, so the score
is deterministic and the candidates are compared on equal terms (:class:`amc.evaluation.scores.Finetune`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from amc.data.streaming import take
from amc.device import model_device
from amc.seeding import seeded

FINETUNE_BATCH = 64
FINETUNE_LR = 0.01


def finetune_samples(train_set: Dataset, *, steps: int, seed: int) -> TensorDataset:
    """The ``steps * 64`` seeded training samples (drawn with replacement: any K) that ``finetune:K`` trains on.

    The same samples for every candidate: an evaluator gathers them once (a streamed dataset is read once).
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randint(len(train_set), (steps * FINETUNE_BATCH,), generator=generator)
    return TensorDataset(*take(train_set, order))


def finetune_steps(model: nn.Module, train_set: Dataset, *, steps: int, seed: int,
                   teacher: nn.Module | None = None, samples: TensorDataset | None = None) -> nn.Module:
    """``steps`` SGD steps of :func:`amc.train.train` on ``steps * 64`` seeded training samples, in place.

    ``samples``: those samples gathered before (:func:`finetune_samples`), so they are not read again.
    """
    from amc.train import TrainConfig, train

    if samples is None:
        samples = finetune_samples(train_set, steps=steps, seed=seed)
    config = TrainConfig(epochs=1, batch_size=FINETUNE_BATCH, lr=FINETUNE_LR, schedule="cosine", shift=0,
                         weight_decay=0.0)
    with seeded(seed, model_device(model)):  # dropout draws: the seed's, the caller's generator untouched
        return train(model, samples, config, seed=seed, teacher=teacher, progress=False)


def training_passes(model: nn.Module, samples: TensorDataset, *, teacher: nn.Module | None = None) -> None:
    """The forward and backward passes of :func:`finetune_steps` on ``samples`` alone (no optimiser, no
    data loading): the floor of its cost, for the overhead benchmark. Leaves gradients in ``model``."""
    import torch.nn.functional as F

    device = model_device(model)
    model.train()
    inputs, labels = samples.tensors
    for x, y in zip(inputs.split(FINETUNE_BATCH), labels.split(FINETUNE_BATCH)):
        x, y = x.to(device), y.to(device)
        if teacher is not None:
            with torch.no_grad():
                teacher(x)
        F.cross_entropy(model(x), y).backward()
    model.eval()


__all__ = ["FINETUNE_BATCH", "FINETUNE_LR", "finetune_samples", "finetune_steps", "training_passes"]
