"""Training of base models, with an on-disk cache keyed by model, data, seed and training config."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from amc.data.datasets import DataSplits
from amc.device import model_device
from amc.evaluation.metrics import accuracy
from amc.errors import ConfigError, ModelError
from amc.graph.discover import fingerprint
from amc.models import build_model, model_files
from amc.paths import default_cache_dir
from amc.progress import progress_bar
from amc.seeding import seeded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """SGD with momentum, cosine learning-rate schedule and random-shift augmentation."""

    epochs: int = 60
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    shift: int = 1  # random translation of up to this many pixels (0 = no augmentation)
    label_smoothing: float = 0.1
    schedule: str = "onecycle"  # "onecycle" (warm-up, then cosine) or "cosine" (fine-tuning)

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.schedule not in ("onecycle", "cosine"):
            raise ConfigError(f"schedule must be 'onecycle' or 'cosine', got {self.schedule!r}")


@dataclass(frozen=True)
class TrainResult:
    val_accuracy: float
    test_accuracy: float
    seconds: float
    cached: bool
    checkpoint: str | None


def _shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Random translation by up to ``max_shift`` pixels, zero padded (one shift per batch)."""
    if max_shift == 0:
        return x
    dx, dy = (torch.randint(-max_shift, max_shift + 1, (2,), generator=generator)).tolist()
    if x.dim() != 4:  # token ids (B, T) of a text dataset: no pixels to shift (drawn all the same, as replays do)
        return x
    return torch.roll(F.pad(x, [max_shift] * 4), shifts=(dy, dx), dims=(2, 3))[
        ..., max_shift : max_shift + x.shape[2], max_shift : max_shift + x.shape[3]
    ]


def train(
    model: nn.Module,
    train_set: Dataset,
    config: TrainConfig = TrainConfig(),
    *,
    seed: int = 0,
    teacher: nn.Module | None = None,
    progress: bool = True,
    description: str = "training",
    start_epoch: int = 0,
    on_epoch: Callable[[int, nn.Module, float], None] | None = None,
    optimizer_state: dict | None = None,
    on_optimizer: Callable[[int, torch.optim.Optimizer], None] | None = None,
) -> nn.Module:
    """Trains ``model`` in place and returns it (in eval mode).

    Args:
        model: The model to train, on the device it is on.
        train_set: Dataset of (inputs, labels): a ``TensorDataset`` is sliced, any other dataset is
            streamed through a ``DataLoader`` in the same seeded order (:func:`amc.data.streaming.batches`).
        config: Optimiser settings.
        seed: Seeds shuffling and augmentation (a generator of their own). Dropout draws from the global
            generator: callers seed it in :func:`seeded` (as :func:`load_or_train` does).
        teacher: Optional model to distil from (KL on soft targets, Hinton et al., 2015).
        progress: Show a progress bar.
        start_epoch: Resume the schedule here: the skipped epochs' data order, augmentation draws and
            learning-rate steps are replayed without computing, so epoch ``k`` sees the batches and
            learning rate of the full run (the optimiser's momentum starts at zero). Used to rewind.
        on_epoch: Called with (epochs done, model, mean loss) after each epoch.
        optimizer_state: An optimiser ``state_dict`` saved at ``start_epoch`` (momentum buffers): with it a
            resumed run continues exactly where it stopped, for a model without dropout.
        on_optimizer: Called with (epochs done, optimiser) after each epoch, after ``on_epoch``: to checkpoint.
    """
    from amc.data.streaming import batches

    n = len(train_set)
    device = model_device(model)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.momentum > 0)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    else:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps,
                                                        pct_start=0.15)
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": intended while replaying
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(start_epoch):
            torch.randperm(n, generator=generator)
            for _ in range(0, n, config.batch_size):
                if config.shift:
                    torch.randint(-config.shift, config.shift + 1, (2,), generator=generator)  # as _shift draws
                scheduler.step()
    model.train()
    if teacher is not None:
        teacher.eval()
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task(description, total=config.epochs, completed=start_epoch, status="")
        for epoch in range(start_epoch, config.epochs):
            order = torch.randperm(n, generator=generator)
            total_loss = 0.0
            for x, y in batches(train_set, config.batch_size, order=order, device=device):
                x = _shift(x, config.shift, generator)
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                if teacher is not None:
                    with torch.no_grad():
                        soft = F.softmax(teacher(x) / 4.0, dim=1)
                    loss = 0.5 * loss + 0.5 * 16.0 * F.kl_div(F.log_softmax(logits / 4.0, 1), soft, reduction="batchmean")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total_loss += loss.item() * len(y)
            bar.update(task, advance=1, status=f"loss {total_loss / n:.4f}")
            if on_epoch is not None:
                on_epoch(epoch + 1, model, total_loss / n)
            if on_optimizer is not None:
                on_optimizer(epoch + 1, optimizer)
    return model.eval()


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Loads a ``state_dict`` checkpoint (``weights_only=True``) into ``model``.

    Raises:
        ModelError: The file is missing, unreadable or belongs to another architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {str(path)!r} does not exist; pass the path of a saved state_dict")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or non-weights files
        raise ModelError(f"cannot read checkpoint {str(path)!r}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"checkpoint {str(path)!r} holds {type(state).__name__}, not a state_dict")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{label}: {keys[:3]}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong))
            if keys
        )
        raise ModelError(
            f"checkpoint {str(path)!r} is for another architecture than {type(model).__name__} ({details}); "
            "pass the --model that the checkpoint was trained with"
        )
    model.load_state_dict(state)
    return model.eval()


def _cache_key(model_name: str, data: DataSplits, seed: int, config: TrainConfig, model_kwargs: dict) -> str:
    payload = json.dumps(
        {"model": model_name, "kwargs": model_kwargs, "data": data.fingerprint(), "seed": seed,
         "train": asdict(config), "torch": torch.__version__.split("+")[0],
         **({"files": files} if (files := model_files(model_name)) else {})},  # hf:PATH: its files' sizes and times
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_or_train(
    model_name: str,
    data: DataSplits,
    *,
    seed: int = 0,
    config: TrainConfig = TrainConfig(),
    cache_dir: str | os.PathLike | None = None,
    model_kwargs: dict | None = None,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> tuple[nn.Module, TrainResult]:
    """Returns a trained base model on ``device``, from the cache when the same model, data, seed and config exist.

    The cache file is ``<cache_dir>/<model>-<key>.pt`` (a ``state_dict`` saved from the CPU, loaded with
    ``weights_only=True``); a corrupt or foreign file is retrained and overwritten, never trusted. Each
    finished epoch is saved beside it (``<model>-<key>.partial.pt``: weights, optimiser, generator): an
    interrupted training resumes there, with the same weights as an uninterrupted one on the CPU. The
    key does not depend on ``device``: a model trained on a GPU is found again on the CPU.
    """
    with seeded(seed, device):  # initial weights and dropout draws: the seed's, the caller's generator untouched
        return _load_or_train(model_name, data, seed=seed, config=config, cache_dir=cache_dir,
                              model_kwargs=dict(model_kwargs or {}), progress=progress, device=device)


def _load_or_train(model_name: str, data: DataSplits, *, seed: int, config: TrainConfig,
                   cache_dir: str | os.PathLike | None, model_kwargs: dict, progress: bool,
                   device: torch.device | str) -> tuple[nn.Module, TrainResult]:
    c = data.input_shape[0]
    model = build_model(model_name, in_channels=c, num_classes=data.num_classes, input_size=data.input_shape[1:],
                        **model_kwargs)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    safe_name = model_name.replace(":", "_").replace("/", "_")
    path = cache / f"{safe_name}-{_cache_key(model_name, data, seed, config, model_kwargs)}.pt"
    start = time.perf_counter()
    if path.is_file():
        try:
            load_checkpoint(model, path)
            log.info("loaded cached base model %s", path)
            model.to(device)
            return model, _result(model, data, time.perf_counter() - start, True, path)
        except ModelError as exc:
            log.warning("ignoring unusable cached model (%s); retraining", exc)
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.pt")
    start_epoch, optimizer_state = _resume_point(model, partial, config.epochs)
    if start_epoch:
        log.info("resuming the training of %s at epoch %d of %d from %s", model_name, start_epoch, config.epochs,
                 partial)
    else:
        log.info("training %s on %s (seed %d, %d epochs)", model_name, data.name, seed, config.epochs)
    model.to(device)

    def save_partial(epochs_done: int, optimizer: torch.optim.Optimizer) -> None:
        if epochs_done < config.epochs:  # the finished model goes to ``path`` below
            _save_atomic({"epoch": epochs_done, "model": _cpu(model.state_dict()),
                          "optimizer": _cpu(optimizer.state_dict()), "rng": torch.get_rng_state()}, partial)

    train(model, data.train, config, seed=seed, progress=progress, description=f"training {model_name}",
          start_epoch=start_epoch, optimizer_state=optimizer_state, on_optimizer=save_partial)
    seconds = time.perf_counter() - start
    _save_atomic(_cpu(model.state_dict()), path)
    partial.unlink(missing_ok=True)
    return model, _result(model, data, seconds, False, path)


def _cpu(state):
    """``state`` (a state_dict, possibly nested as an optimiser's is) with every tensor moved to the CPU."""
    if isinstance(state, Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {k: _cpu(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_cpu(v) for v in state]
    return state


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")  # two processes may train the same base at once
    torch.save(obj, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache file


def read_partial(model: nn.Module, partial: Path, counter: str, total: int) -> dict | None:
    """The interrupted training saved at ``partial`` (its weights loaded into ``model``), or None.

    ``saved[counter]`` (epochs or steps done) must lie in 1..total-1; an unreadable or foreign file is ignored
    (and trained over), with a warning.
    """
    if not partial.is_file():
        return None
    try:
        saved = torch.load(partial, map_location="cpu", weights_only=True)
        done = int(saved[counter])
        if not 0 < done < total:
            raise ValueError(f"{counter} {done} is outside 1..{total - 1}")
        model.load_state_dict(saved["model"])
        return saved
    except Exception as exc:  # torch and a foreign dict raise several types
        log.warning("ignoring unusable partial training %s (%s); training from the start", partial, exc)
        return None


def _resume_point(model: nn.Module, partial: Path, epochs: int) -> tuple[int, dict | None]:
    """(epochs done, optimiser state) of an interrupted training saved at ``partial``, or (0, None); the global
    CPU generator's state is restored from it, so dropout's draws go on as in the uninterrupted run."""
    saved = read_partial(model, partial, "epoch", epochs)
    if saved is None:
        return 0, None
    torch.set_rng_state(saved["rng"])
    return int(saved["epoch"]), saved["optimizer"]


def _result(model: nn.Module, data: DataSplits, seconds: float, cached: bool, path: Path) -> TrainResult:
    return TrainResult(
        val_accuracy=accuracy(model, data.val), test_accuracy=accuracy(model, data.test),
        seconds=seconds, cached=cached, checkpoint=str(path),
    )


__all__ = ["TrainConfig", "TrainResult", "fingerprint", "load_checkpoint", "load_or_train", "seeded", "train"]
