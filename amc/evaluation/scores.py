"""Candidate scores: what a search maximises for each pruned candidate, cheapest first.

A score turns a freshly pruned copy of the base model into the model whose validation accuracy the
search sees. Every score starts with adaptive BatchNorm (EagleEye, Li et al. 2020): running statistics
re-estimated on a few training batches.

| name             | after adaptive BN                                                         |
|------------------|---------------------------------------------------------------------------|
| ``bn``           | nothing: the pruned model as it is (EagleEye's score)                      |
| ``reconstruct``  | least-squares refit of every layer whose inputs lost channels, so that it  |
|                  | reproduces the base model's outputs on sampled feature-map points (He et   |
|                  | al. 2017, "Channel pruning"; AMC samples ~10 points from 60 images), then   |
|                  | adaptive BN again                                                          |
| ``finetune:K``   | ``K`` SGD steps on training batches (the same seeded batches for every     |
|                  | candidate); ``finetune:K+kd`` distils from the base model's logits          |

The base model is never modified, and every score is deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from amc.choices import SCORE_CHOICES, Score, check_score  # noqa: F401 (re-exported)

FINETUNE_BATCH = 64
FINETUNE_LR = 0.01


def finetune_samples(train_set: Dataset, *, steps: int, seed: int) -> TensorDataset:
    """The ``steps * 64`` seeded training samples (drawn with replacement: any K) that ``finetune:K`` trains on.

    The same samples for every candidate: an evaluator gathers them once (a streamed dataset is read once).
    """
    from amc.data.streaming import take

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
    with torch.random.fork_rng():  # dropout draws from the global generator: seed it, leave the caller's alone
        torch.manual_seed(seed)
        return train(model, samples, config, seed=seed, teacher=teacher, progress=False)


def reconstruct(pruned: nn.Module, base: nn.Module, targets: Mapping[str, Sequence[int] | None], inputs: Tensor, *,
                points: int = 1000, seed: int = 0, ridge: float = 1.0) -> list[str]:
    """Refits ``targets`` of ``pruned`` in forward order so that each reproduces the base model's output.

    For a target layer (a conv with ``groups == 1`` or a linear), the pruned model's own input to it
    (after the layers refitted before it) is paired with the base model's output of the same layer on
    the same images; up to ``points`` random output positions per image are sampled (AMC samples 10 from
    each of 60 images) and the weight and bias are refitted by ridge regression towards their current
    values (``ridge`` times the mean diagonal of the normal matrix). On resnet20 / fashion-mnist at budget
    0.3 (uniform policy, 60 images) a weak pull (0.001) overfits the samples and drops validation accuracy
    from 43.7% (adaptive BN alone) to 11.3%; 1.0 with up to 1,000 positions per image gives 74.4%.

    Args:
        targets: Layer name -> the base output channels the pruned layer kept (None: all of them).
        inputs: The images (N, C, H, W) both models see.

    Returns:
        The names of the layers refitted.
    """
    generator = torch.Generator().manual_seed(seed)
    wanted = _outputs(base, list(targets), inputs)  # name -> (N, C_base, ...) base outputs
    done = []
    for name, kept in targets.items():
        layer = pruned.get_submodule(name)
        x = _inputs(pruned, name, inputs)  # the pruned model's input to the layer, after earlier refits
        y = wanted[name] if kept is None else wanted[name][:, list(kept)]
        features, target = _samples(layer, x, y, points, generator)  # (S, F), (S, out)
        _refit(layer, features, target, ridge)
        done.append(name)
    return done


def _outputs(model: nn.Module, names: list[str], inputs: Tensor) -> dict[str, Tensor]:
    got: dict[str, Tensor] = {}
    handles = [model.get_submodule(n).register_forward_hook(lambda m, a, out, n=n: got.__setitem__(n, out.detach()))
               for n in names]
    try:
        with torch.no_grad():
            model.eval()(inputs)
    finally:
        for h in handles:
            h.remove()
    return got


def _inputs(model: nn.Module, name: str, inputs: Tensor) -> Tensor:
    got: list[Tensor] = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, args: got.append(args[0].detach()))
    try:
        with torch.no_grad():
            model.eval()(inputs)
    finally:
        handle.remove()
    return got[0]


def _samples(layer: nn.Module, x: Tensor, y: Tensor, points: int, generator) -> tuple[Tensor, Tensor]:
    """Input patches and target outputs at ``points`` random output positions per image."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])  # (S, in), (S, out)
    patches = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
                       stride=layer.stride)  # (N, in*kh*kw, L)
    n, _, positions = patches.shape
    pick = torch.stack([torch.randperm(positions, generator=generator)[:points] for _ in range(n)]).to(x.device)  # (N, P)
    feats = patches.gather(2, pick[:, None, :].expand(-1, patches.shape[1], -1))  # (N, F, P)
    target = y.flatten(2).gather(2, pick[:, None, :].expand(-1, y.shape[1], -1))  # (N, out, P)
    return feats.permute(0, 2, 1).reshape(-1, patches.shape[1]), target.permute(0, 2, 1).reshape(-1, y.shape[1])


def _refit(layer: nn.Module, features: Tensor, target: Tensor, ridge: float) -> None:
    """Ridge regression of ``[W | b]`` towards its current value: (A^T A + l I)^-1 (A^T Y + l W0)."""
    weight = layer.weight.detach().reshape(layer.weight.shape[0], -1)  # (out, F)
    has_bias = layer.bias is not None
    a = torch.cat([features, features.new_ones(len(features), 1)], 1) if has_bias else features  # (S, F+1)
    w0 = torch.cat([weight, layer.bias.detach()[:, None]], 1) if has_bias else weight  # (out, F+1)
    a64, y64, w64 = a.double(), target.double(), w0.double()
    normal = a64.T @ a64
    lam = ridge * float(normal.diagonal().mean()) + 1e-12
    solved = torch.linalg.solve(normal + lam * torch.eye(len(normal), dtype=torch.float64, device=normal.device),
                                a64.T @ y64 + lam * w64.T).T.to(weight.dtype)  # (out, F+1)
    with torch.no_grad():
        layer.weight.copy_(solved[:, : weight.shape[1]].reshape(layer.weight.shape))
        if has_bias:
            layer.bias.copy_(solved[:, -1])
