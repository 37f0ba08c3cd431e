"""Lottery-ticket experiments for unstructured (weight) pruning.

Iterative magnitude pruning with rewinding (Frankle & Carbin, 2019, "The Lottery Ticket Hypothesis";
late rewinding per Frankle et al., 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis"):

1. Train the dense network from a seeded initialisation, saving its initial weights and, for late
   rewinding, its weights after ``rewind_epoch`` epochs (the *rewind point*).
2. Each round, remove ``prune_per_round`` of the weights that are still alive, by magnitude of the trained
   weights. Masks accumulate: a weight pruned once stays pruned.
3. Rewind: every surviving weight gets its value at the rewind point back, exactly; BatchNorm parameters
   and running statistics and biases are rewound too. Retrain with the mask fixed, from epoch
   ``rewind_epoch`` of the same schedule to its end (the same data order and augmentation as the dense run).
4. Control: the same mask on a freshly (differently seeded) initialised network, trained exactly like the
   ticket. A winning ticket beats its random re-initialisation at the same sparsity.

Which weights are pruned: the ``weight`` of every ``Conv2d`` and ``Linear`` module (biases and BatchNorm
are never pruned). With ``global_pruning`` one magnitude threshold is shared by all of them except the
final classifier (the last ``Linear`` in module order), which is pruned on its own at
``output_layer_rate * prune_per_round`` per round: 0.5 by default, the half rate of the paper's conv
networks, since the small output layer would otherwise be pruned away first; 0 keeps it dense, 1 prunes it
at the full rate. Without ``global_pruning`` every layer is pruned at ``prune_per_round`` on its own.

Sparsity is the fraction of all these weights (the output layer included) that are zero.

Training is :func:`amc.train.train`; its ``start_epoch`` and ``on_epoch`` let a round snapshot the
rewind epoch and resume the schedule from it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import prune
from torch.utils.data import TensorDataset

from amc.data.datasets import DataSplits
from amc.device import model_device
from amc.errors import ConfigError, ModelError
from amc.models import build_model
from amc.progress import progress_bar
from amc.evaluation.metrics import accuracy
from amc.seeding import seeded
from amc.train import TrainConfig, train

log = logging.getLogger(__name__)

# The random re-initialisation control of round r is seeded with seed + CONTROL_SEED_OFFSET * (r + 1):
# a different init for every round, never one of the small seeds a user passes.
CONTROL_SEED_OFFSET = 100_003

ModelSpec = str | Callable[[], nn.Module]


@dataclass(frozen=True)
class LotteryConfig:
    """Settings of one lottery-ticket experiment (one seed).

    Attributes:
        rounds: Pruning rounds after the dense round 0; sparsity after ``k`` rounds is ``1 - (1 - p)^k``.
        prune_per_round: ``p``, the fraction of the *remaining* weights removed each round, in (0, 1).
        rewind_epoch: 0 rewinds to the initial weights; ``k > 0`` to the weights after ``k`` epochs of the
            dense run ("late rewinding"); the retraining then runs epochs ``k .. train.epochs``.
        train: Optimiser settings of the dense run and of every retraining.
        global_pruning: One magnitude threshold across layers (True) or ``p`` per layer (False).
        output_layer_rate: The final classifier is pruned at this multiple of ``p``, in [0, 1].
        seed: Seeds the initialisation, the data order and dropout.
    """

    rounds: int = 5
    prune_per_round: float = 0.2
    rewind_epoch: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=15))
    global_pruning: bool = True
    output_layer_rate: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not _is_int(self.rounds) or self.rounds < 1:
            raise ConfigError(f"rounds must be an integer >= 1, got {self.rounds!r}; use 1 or more pruning rounds")
        if not _is_number(self.prune_per_round) or not 0.0 < self.prune_per_round < 1.0:
            raise ConfigError(f"prune_per_round must be a fraction in (0, 1), got {self.prune_per_round!r}; "
                              "e.g. 0.2 removes 20% of the remaining weights per round")
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        if self.train.epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1, got {self.train.epochs}; every round trains")
        if not _is_int(self.rewind_epoch) or not 0 <= self.rewind_epoch < self.train.epochs:
            raise ConfigError(f"rewind_epoch must be an integer in [0, {self.train.epochs}) (the training epochs), "
                              f"got {self.rewind_epoch!r}; use 0 to rewind to the initial weights")
        if not isinstance(self.global_pruning, bool):
            raise ConfigError(f"global_pruning must be True or False, got {self.global_pruning!r}")
        if not _is_number(self.output_layer_rate) or not 0.0 <= self.output_layer_rate <= 1.0:
            raise ConfigError(f"output_layer_rate must be in [0, 1], got {self.output_layer_rate!r}; "
                              "0.5 prunes the final classifier at half the rate, 0 keeps it dense")
        if not _is_int(self.seed):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


@dataclass(frozen=True)
class LotteryRound:
    """Accuracy of the ticket and of its random re-initialisation after one round.

    Round 0 is the dense network; its "random" entry is the dense network trained from another init.
    """

    round: int
    sparsity: float
    ticket_val: float
    ticket_test: float
    random_val: float | None
    random_test: float | None
    seconds: float


def prunable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The ``Conv2d`` and ``Linear`` modules whose weights are pruned, by qualified name, in module order."""
    found = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    if not found:
        raise ModelError(f"{type(model).__name__} has no Conv2d or Linear layer to prune")
    return found


def output_layer_name(model: nn.Module) -> str | None:
    """The final classifier: the last ``Linear`` in module order (None if the model has none)."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def effective_weight(module: nn.Module) -> Tensor:
    """The weight a forward pass uses: ``weight_orig * weight_mask`` while masked (``module.weight`` is only
    refreshed by a forward pass, so it is one optimiser step stale after training)."""
    if hasattr(module, "weight_orig"):
        return module.weight_orig.detach() * module.weight_mask
    return module.weight.detach()


def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
    """Masks the weights of ``model`` in place (``custom_from_mask``): masked weights read as zero and cannot
    regrow during training, since their gradient is zero too."""
    modules = prunable_modules(model)
    for name, mask in masks.items():
        prune.custom_from_mask(modules[name], "weight", mask=mask.to(modules[name].weight.dtype))
    return model


def current_masks(model: nn.Module) -> dict[str, Tensor]:
    """The mask of every prunable weight of ``model`` (all ones where it is not masked), as bool tensors."""
    return _masks_of(prunable_modules(model))


def _masks_of(modules: dict[str, nn.Module]) -> dict[str, Tensor]:
    return {name: (m.weight_mask != 0).clone() if hasattr(m, "weight_mask")
            else torch.ones_like(m.weight, dtype=torch.bool) for name, m in modules.items()}


class _Weight(nn.Module):
    """Holds one weight tensor, so it can be pruned without touching the model it came from."""

    def __init__(self, weight: Tensor, mask: Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        if mask is not None:
            prune.custom_from_mask(self, "weight", mask=mask)


def sparsity(masks: dict[str, Tensor]) -> float:
    """Fraction of masked (zero) entries over all masks."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / total


def prune_masks(model: nn.Module, config: LotteryConfig) -> dict[str, Tensor]:
    """One round of magnitude pruning of the trained ``model`` (masked or dense); returns the new masks.

    Removes ``prune_per_round`` of the weights still alive (the output layer at ``output_layer_rate`` times
    that), ranked by the magnitude of the trained weights; weights already masked stay masked. ``model`` is
    left unchanged.
    """
    modules = prunable_modules(model)
    output = output_layer_name(model)
    p = config.prune_per_round
    # Prune stand-ins (the trained effective weight under the current mask), so the model keeps its state.
    stand_ins = {name: _Weight(effective_weight(m).clone(), getattr(m, "weight_mask", None))
                 for name, m in modules.items()}
    if config.global_pruning:
        hidden = [(stand_ins[n], "weight") for n in modules if n != output]
        if hidden:
            prune.global_unstructured(hidden, pruning_method=prune.L1Unstructured, amount=p)
    else:
        for name in modules:
            if name != output:
                prune.l1_unstructured(stand_ins[name], "weight", amount=p)
    if output is not None:
        prune.l1_unstructured(stand_ins[output], "weight", amount=p * config.output_layer_rate)
    return _masks_of(stand_ins)


def _clone_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_span(model: nn.Module, train_set: TensorDataset, config: TrainConfig, *, seed: int, start_epoch: int = 0,
               snapshot_epoch: int | None = None, on_epoch: Callable[[int, float], None] | None = None
               ) -> dict[str, Tensor] | None:
    """Trains ``model`` in place over epochs ``start_epoch .. config.epochs`` of :func:`amc.train.train`'s
    schedule (the same batches and learning rates as the full run); returns the model's ``state_dict``
    after ``snapshot_epoch`` epochs if asked (``start_epoch``: before training).
    """
    snapshot: dict[str, dict[str, Tensor]] = {}
    if snapshot_epoch == start_epoch:
        snapshot["state"] = _clone_state(model)

    def after_epoch(epoch: int, trained: nn.Module, loss: float) -> None:
        if snapshot_epoch == epoch:
            snapshot["state"] = _clone_state(trained)
        if on_epoch is not None:
            on_epoch(epoch, loss)

    train(model, train_set, config, seed=seed, progress=False, start_epoch=start_epoch, on_epoch=after_epoch)
    return snapshot.get("state")


class LotteryExperiment:
    """One seed of a lottery-ticket experiment, a round at a time.

    ``run()`` does everything; the steps are public so tests (and notebooks) can inspect each state::

        exp = LotteryExperiment("cnn", data, config)
        exp.train_dense()            # round 0; saves init_state and rewind_state
        exp.next_round()             # prune, rewind, retrain, control -> LotteryRound

    Attributes:
        init_state: ``state_dict`` of the seeded initialisation.
        rewind_state: ``state_dict`` at the rewind point (``init_state`` for ``rewind_epoch=0``).
        masks: Current masks (bool, by module name); all ones before the first round.
        ticket: The last trained ticket (masked), the one the next round prunes.
        control: The last trained random re-initialisation (masked).
        rounds: The finished rounds.
    """

    def __init__(self, model: ModelSpec, data: DataSplits, config: LotteryConfig = LotteryConfig(), *,
                 progress: Callable[[str], None] | None = None) -> None:
        if not isinstance(config, LotteryConfig):
            raise ConfigError(f"config must be a LotteryConfig, got {type(config).__name__}")
        self.data, self.config = data, config
        if isinstance(model, str):
            name = model
            self._factory = lambda: build_model(name, in_channels=data.input_shape[0], num_classes=data.num_classes,
                                                input_size=data.input_shape[1:])
        elif callable(model):
            self._factory = model
        else:
            raise ModelError(f"model must be a model name or a factory, got {type(model).__name__}")
        self.status: Callable[[str], None] = progress or (lambda _: None)
        self.init_state: dict[str, Tensor] = {}
        self.rewind_state: dict[str, Tensor] = {}
        self.masks: dict[str, Tensor] = {}
        self.ticket: nn.Module | None = None
        self.control: nn.Module | None = None
        self.rounds: list[LotteryRound] = []

    def build(self, seed: int) -> nn.Module:
        """A freshly initialised model, seeded (the global RNG is left as it was)."""
        with seeded(seed):  # built on the CPU
            model = self._factory()
        if not isinstance(model, nn.Module):
            raise ModelError(f"the model factory returned {type(model).__name__}, not a torch.nn.Module")
        return model

    def control_seed(self, round_: int) -> int:
        return self.config.seed + CONTROL_SEED_OFFSET * (round_ + 1)

    def _train(self, model: nn.Module, start_epoch: int, label: str, snapshot_epoch: int | None = None):
        cfg = self.config.train

        def on_epoch(epoch: int, loss: float) -> None:
            self.status(f"{label}: epoch {epoch}/{cfg.epochs} loss {loss:.3f}")

        with seeded(self.config.seed, model_device(model)):  # dropout draws: the same for the ticket and its control
            return train_span(model, self.data.train, cfg, seed=self.config.seed, start_epoch=start_epoch,
                              snapshot_epoch=snapshot_epoch, on_epoch=on_epoch)

    def _accuracy(self, model: nn.Module | None) -> tuple[float | None, float | None]:
        if model is None:
            return None, None
        return accuracy(model, self.data.val), accuracy(model, self.data.test)

    def train_dense(self) -> LotteryRound:
        """Round 0: trains the dense network (saving the init and rewind point) and a dense control."""
        assert not self.rounds, "train_dense() runs once, first"
        start = time.perf_counter()
        model = self.build(self.config.seed)
        self.init_state = _clone_state(model)
        snapshot = self._train(model, 0, "round 0 dense", snapshot_epoch=self.config.rewind_epoch)
        assert snapshot is not None
        self.rewind_state = snapshot
        self.ticket = model
        self.masks = current_masks(model)
        self.control = self.build(self.control_seed(0))
        self._train(self.control, 0, "round 0 random init")
        return self._record(0, start)

    def rewound(self) -> nn.Module:
        """A new model at the rewind point with the current masks: surviving weights equal ``rewind_state``."""
        model = self.build(self.config.seed)
        model.load_state_dict(self.rewind_state)
        return apply_masks(model, self.masks)

    def random_reinit(self, round_: int) -> nn.Module:
        """The control of ``round_``: the current masks on a fresh init seeded with :meth:`control_seed`."""
        return apply_masks(self.build(self.control_seed(round_)), self.masks)

    def next_round(self) -> LotteryRound:
        """Prunes the last ticket, rewinds, retrains it and its random re-initialisation."""
        if self.ticket is None:
            raise RuntimeError("call train_dense() before next_round()")
        start = time.perf_counter()
        round_ = len(self.rounds)
        self.masks = prune_masks(self.ticket, self.config)
        k = self.config.rewind_epoch
        self.ticket = self.rewound()
        self._train(self.ticket, k, f"round {round_} ticket")
        self.control = self.random_reinit(round_)
        self._train(self.control, k, f"round {round_} random init")
        return self._record(round_, start)

    def _record(self, round_: int, start: float) -> LotteryRound:
        ticket_val, ticket_test = self._accuracy(self.ticket)
        random_val, random_test = self._accuracy(self.control)
        result = LotteryRound(round_, sparsity(self.masks), ticket_val, ticket_test, random_val, random_test,
                              time.perf_counter() - start)
        log.info("lottery seed %d round %d: sparsity %.3f ticket val %.4f test %.4f, random init val %.4f test %.4f",
                 self.config.seed, round_, result.sparsity, ticket_val, ticket_test, random_val, random_test)
        self.rounds.append(result)
        return result

    def run(self) -> list[LotteryRound]:
        """Round 0 and every pruning round; returns all rounds."""
        if not self.rounds:
            self.train_dense()
        while len(self.rounds) <= self.config.rounds:
            self.next_round()
        return list(self.rounds)


def run_lottery(model: ModelSpec, data: DataSplits, config: LotteryConfig = LotteryConfig(), *,
                progress: bool = True, on_round: Callable[[LotteryRound], None] | None = None) -> list[LotteryRound]:
    """Runs a lottery-ticket experiment (one seed); returns round 0 (dense) and ``config.rounds`` rounds.

    Args:
        model: A model name for :func:`amc.models.build_model` or a factory ``() -> nn.Module``.
        data: The dataset splits; val and test accuracy are measured after every round.
        config: Rounds, pruning rate, rewind point, training and seed.
        progress: Show a progress bar over the rounds.
        on_round: Called with each finished round.

    Raises:
        ConfigError: ``config`` is not a :class:`LotteryConfig`.
        ModelError: The model name is unknown or it has no layer to prune.
    """
    exp = LotteryExperiment(model, data, config)
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task(f"lottery seed {config.seed}", total=config.rounds + 1, status="")
        exp.status = lambda s: bar.update(task, status=s)
        while len(exp.rounds) <= config.rounds:
            result = exp.next_round() if exp.rounds else exp.train_dense()
            bar.update(task, advance=1, status=f"round {result.round}: sparsity {result.sparsity:.3f} ticket test "
                                                f"{result.ticket_test:.3f} random {result.random_test:.3f}")
            if on_round is not None:
                on_round(result)
    return exp.rounds


__all__ = ["CONTROL_SEED_OFFSET", "LotteryConfig", "LotteryExperiment", "LotteryRound", "apply_masks",
           "current_masks", "effective_weight", "output_layer_name", "prunable_modules", "prune_masks",
           "run_lottery", "sparsity", "train_span"]
