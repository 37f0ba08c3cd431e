"""Training of the built-in decoder LM (``tiny-lm``) on the code corpus, cached like the other base models.

Next-token cross-entropy on windows drawn at random offsets of the training split
(:meth:`amc.data.lm_tokens.TokenSplit.sample`), AdamW with a linear warm-up and a cosine decay to a tenth
of the peak learning rate, weight decay on the matrices only, gradients clipped (nanoGPT's recipe).

:func:`load_or_train_lm` caches the trained weights as ``<cache_dir>/<model>-<key>.pt``, the key hashing the
model, its arguments, the data's fingerprint (corpus, tokenizer, split), the seed, the training settings and
the torch version, as :func:`amc.train.load_or_train` does; an interrupted training resumes from
``<model>-<key>.partial.pt`` (weights, optimiser, data generator, saved every ``checkpoint_every`` steps) with
the weights of an uninterrupted run on the CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from amc.data.lm_tokens import LMData
from amc.errors import ConfigError, ModelError
from amc.evaluation.lm_scores import perplexity
from amc.models.lm import LANGUAGE_MODELS, build_lm
from amc.paths import default_cache_dir
from amc.progress import progress_bar
from amc.seeding import seeded
from amc.train import _cpu, _save_atomic, load_checkpoint, read_partial

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMTrainConfig:
    """AdamW settings and length of an LM training.

    Attributes:
        steps: Optimiser steps.
        batch_size: Windows per step (each ``data.seq_len`` tokens).
        lr: Peak learning rate.
        warmup: Steps of linear warm-up.
        weight_decay: On weight matrices (not on biases, norms or position embeddings).
        grad_clip: Largest gradient norm (0: no clipping).
        checkpoint_every: Save a resumable checkpoint every this many steps (0: never).
        eval_windows: Held-out windows the result's perplexity is measured on.
    """

    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    eval_windows: int = 64

    def __post_init__(self) -> None:
        for name in ("steps", "warmup", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"LM training {name}={value!r} must be an integer >= 0")
        for name in ("batch_size", "eval_windows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"LM training {name}={value!r} must be a positive integer")
        if not self.lr > 0:
            raise ConfigError(f"LM training lr={self.lr!r} must be > 0")

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based): linear warm-up, then cosine down to ``lr / 10``."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


@dataclass(frozen=True)
class LMTrainResult:
    """What :func:`load_or_train_lm` did: held-out perplexity (on ``eval_windows`` windows), time, cache file."""

    heldout_perplexity: float
    train_loss: float  # mean of the last 10% of the steps' losses (nan when loaded from the cache)
    seconds: float
    cached: bool
    checkpoint: str | None


def train_lm(model: nn.Module, data: LMData, config: LMTrainConfig = LMTrainConfig(), *, seed: int = 0,
             progress: bool = True, start_step: int = 0, optimizer_state: dict | None = None,
             generator_state: torch.Tensor | None = None,
             on_step: Callable[[int, torch.optim.Optimizer, torch.Generator], None] | None = None) -> list[float]:
    """Trains ``model`` in place on ``data.train`` (next-token loss) and returns the losses of the steps run.

    Args:
        model: A decoder LM, ``forward(ids (B, T)) -> logits (B, T, V)``, on the device it trains on.
        data: The token data (windows of ``data.seq_len`` tokens).
        config: Optimiser settings.
        seed: Seeds the windows drawn (a generator of their own).
        progress: Show a progress bar.
        start_step, optimizer_state, generator_state: Resume after ``start_step`` steps with the optimiser's
            and the window generator's saved states.
        on_step: Called with (steps done, optimiser, generator) after each step (to checkpoint).
    """
    device = next(model.parameters()).device
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "pos_emb" not in n]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.95))
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    generator = torch.Generator().manual_seed(seed)
    if generator_state is not None:
        generator.set_state(generator_state)
    losses: list[float] = []
    model.train()
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task("training LM", total=config.steps, completed=start_step, status="")
        for step in range(start_step, config.steps):
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(step)
            batch = data.train.sample(config.batch_size, data.seq_len, generator).to(device)  # (B, T)
            logits = model(batch)[:, :-1]  # (B, T-1, V)
            loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            losses.append(loss.item())
            bar.update(task, advance=1, status=f"loss {losses[-1]:.3f}")
            if on_step is not None:
                on_step(step + 1, optimizer, generator)
    model.eval()
    return losses


def lm_cache_path(model_name: str, data: LMData, *, seed: int = 0, config: LMTrainConfig = LMTrainConfig(),
                  model_kwargs: dict | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The file :func:`load_or_train_lm` keeps these trained weights in."""
    payload = json.dumps({"model": model_name, "kwargs": dict(model_kwargs or {}), "data": data.fingerprint(),
                          "seed": seed, "train": asdict(config), "torch": torch.__version__.split("+")[0]},
                         sort_keys=True)
    key = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / f"{model_name}-{key}.pt"


def load_or_train_lm(model_name: str, data: LMData, *, seed: int = 0, config: LMTrainConfig = LMTrainConfig(),
                     model_kwargs: dict | None = None, cache_dir: str | os.PathLike | None = None,
                     progress: bool = True, device: torch.device | str = "cpu") -> tuple[nn.Module, LMTrainResult]:
    """A trained built-in LM on ``device`` (eval mode), from the cache when the same one was trained before.

    Args:
        model_name: A key of :data:`amc.models.lm.LANGUAGE_MODELS` (``tiny-lm``); built with
            ``vocab_size=data.vocab_size`` and ``context=data.seq_len`` unless ``model_kwargs`` say otherwise.
        data: The token data (:func:`amc.data.lm_tokens.load_lm_data`).
        seed: Seeds the initial weights and the windows drawn.
        config: Training settings.
        model_kwargs: Factory arguments (``dim``, ``depth``, ``heads``, ...).
        cache_dir: Default :func:`amc.paths.default_cache_dir`.
        progress: Show a progress bar.
        device: Where to train; the cache key does not depend on it.

    Raises:
        ModelError: ``model_name`` is not a built-in LM (an ``hf:`` model is loaded, not trained here).
    """
    if model_name not in LANGUAGE_MODELS:
        raise ModelError(f"cannot train language model {model_name!r}: train one of {sorted(LANGUAGE_MODELS)}; an "
                         "hf:PATH model is used as it was saved (amc.models.build_lm)")
    kwargs = {"vocab_size": data.vocab_size, "context": data.seq_len, **(model_kwargs or {})}
    path = lm_cache_path(model_name, data, seed=seed, config=config, model_kwargs=kwargs, cache_dir=cache_dir)
    start = time.perf_counter()
    with seeded(seed, device):
        model = build_lm(model_name, **kwargs)
        if path.is_file():
            try:
                load_checkpoint(model, path)
                log.info("loaded cached language model %s", path)
                model.to(device)
                return model, _result(model, data, config, float("nan"), time.perf_counter() - start, True, path)
            except ModelError as exc:
                log.warning("ignoring unusable cached model (%s); retraining", exc)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.pt")
        step, optimizer_state, generator_state = _resume_point(model, partial, config.steps)
        log.info("%s %s on %s (seed %d, %d steps)", "resuming at step %d:" % step if step else "training",
                 model_name, data.name, seed, config.steps)
        model.to(device)

        def save_partial(done: int, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
            if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
                _save_atomic({"step": done, "model": _cpu(model.state_dict()), "optimizer": _cpu(optimizer.state_dict()),
                              "generator": generator.get_state()}, partial)

        losses = train_lm(model, data, config, seed=seed, progress=progress, start_step=step,
                          optimizer_state=optimizer_state, generator_state=generator_state, on_step=save_partial)
    _save_atomic(_cpu(model.state_dict()), path)
    partial.unlink(missing_ok=True)
    tail = losses[-max(1, len(losses) // 10):] if losses else [float("nan")]
    return model, _result(model, data, config, sum(tail) / len(tail), time.perf_counter() - start, False, path)


def _resume_point(model: nn.Module, partial: Path, steps: int) -> tuple[int, dict | None, torch.Tensor | None]:
    """(steps done, optimiser state, generator state) saved at ``partial`` (weights loaded), or (0, None, None)."""
    saved = read_partial(model, partial, "step", steps)
    if saved is None:
        return 0, None, None
    return int(saved["step"]), saved["optimizer"], saved["generator"]


def _result(model: nn.Module, data: LMData, config: LMTrainConfig, train_loss: float, seconds: float,
            cached: bool, path: Path) -> LMTrainResult:
    windows = data.heldout.windows(data.seq_len, limit=config.eval_windows)
    return LMTrainResult(heldout_perplexity=perplexity(model, windows), train_loss=train_loss, seconds=seconds,
                         cached=cached, checkpoint=str(path))


__all__ = ["LMTrainConfig", "LMTrainResult", "lm_cache_path", "load_or_train_lm", "train_lm"]
