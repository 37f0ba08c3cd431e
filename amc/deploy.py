"""The deploy recipe: one short fine-tune, the same for every candidate, and its validation accuracy.

What a user does with a pruned model before deploying it is fine-tune it. The deploy rung of a search
(``--select finetune:EPOCHS``, :mod:`search.selection`) compares its finalists and the baselines after
exactly that: ``epochs`` of SGD (cosine schedule, the base model's batch size and augmentation) on the
same seeded ``samples`` training images, starting from the candidate as the search scored it (adaptive BN,
or refitted with ``--score reconstruct``), then top-1 accuracy and cross-entropy on the whole validation
split. The test split is never touched here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from amc.context import Context
from amc.data.streaming import batches, take
from amc.device import model_device
from amc.evaluation.evaluator import EvalResult
from amc.evaluation.metrics import tally
from amc.pruning.policy import Policy
from amc.seeding import seeded
from amc.train import TrainConfig, train


@dataclass(frozen=True)
class DeployRecipe:
    """``finetune:EPOCHS`` with a fixed sample count and learning rate.

    Attributes:
        epochs: Epochs over the ``samples`` images.
        samples: Seeded training images (the same for every candidate; all of them when the split is smaller).
        lr: Initial learning rate of SGD with a cosine schedule.
    """

    epochs: int = 1
    samples: int = 10000
    lr: float = 0.01

    @classmethod
    def parse(cls, text: str, *, samples: int = 10000, lr: float = 0.01) -> DeployRecipe:
        """The recipe of ``finetune:EPOCHS`` (checked by :func:`search.values.select_recipe`)."""
        return cls(epochs=int(text.split(":", 1)[1]), samples=samples, lr=lr)

    def __str__(self) -> str:
        return f"finetune:{self.epochs}"

    @property
    def label(self) -> str:
        """The ``score`` column of a deploy-rung row: ``deploy:finetune:EPOCHS``."""
        return f"deploy:{self}"


def tune_set(train_set: Dataset, samples: int, *, seed: int = 0) -> TensorDataset:
    """The recipe's training images: ``samples`` of ``train_set`` in a seeded order (all, reordered, if fewer)."""
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))[:samples]
    return TensorDataset(*take(train_set, order))


def deploy_model(ctx: Context, policy: Policy | list[float], recipe: DeployRecipe, *, seed: int,
                 samples: TensorDataset | None = None) -> nn.Module:
    """The candidate as the search scored it, fine-tuned with ``recipe`` (``seed``: the fine-tune's shuffling
    and augmentation)."""
    model = ctx.evaluator.scored_model(policy)
    samples = samples if samples is not None else tune_set(ctx.data.train, recipe.samples)
    config = TrainConfig(epochs=recipe.epochs, lr=recipe.lr, schedule="cosine", batch_size=ctx.config.train.batch_size,
                         shift=ctx.config.train.shift)
    with seeded(seed, model_device(model)):  # dropout's draws: the seed's, whatever ran in this process before
        train(model, samples, config, seed=seed, progress=False)
    return model.eval()


def validation_result(model: nn.Module, val_set: Dataset) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on the whole validation split."""
    correct, loss = tally(model.eval(), batches(val_set, 512, device=model_device(model)))
    return correct / len(val_set), loss / len(val_set)


def deploy_score(ctx: Context, policy: Policy | list[float], recipe: DeployRecipe, *, seed: int,
                 samples: TensorDataset | None = None) -> EvalResult:
    """Validation accuracy and loss of the candidate after the deploy recipe."""
    start = time.perf_counter()
    model = deploy_model(ctx, policy, recipe, seed=seed, samples=samples)
    acc, loss = validation_result(model, ctx.data.val)
    return EvalResult(acc, loss, (), time.perf_counter() - start, 0.0)


__all__ = ["DeployRecipe", "deploy_model", "deploy_score", "tune_set", "validation_result"]
