"""Tests for amc.train.

Acceptance: the default cnn on digits trains to >= 98% test accuracy in under 60 s on this machine, and
a second call hits the cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amc.errors import ConfigError
from amc.models import build_model
from amc.evaluation.metrics import accuracy
from amc.train import TrainConfig, load_checkpoint, load_or_train, train

QUICK = TrainConfig(epochs=1)  # enough for cache behaviour; accuracy is not the point there


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_default_cnn_trains_fast_and_accurately(trained_cnn, digits) -> None:
    """``trained_cnn`` is the first call into a fresh cache dir with the default TrainConfig."""
    model, result = trained_cnn
    assert not result.cached
    assert result.seconds > 0  # its speed is a benchmark's (BENCHMARKS.md), not a unit test's, to judge
    assert result.test_accuracy >= 0.98
    assert result.val_accuracy >= 0.95
    assert result.test_accuracy == accuracy(model, digits.test)
    assert Path(result.checkpoint).is_file()
    assert not model.training


def test_second_call_hits_the_cache(trained_cnn, digits) -> None:
    model, result = trained_cnn
    again, cached = load_or_train("cnn", digits, cache_dir=Path(result.checkpoint).parent, progress=False)
    assert cached.cached
    assert cached.checkpoint == result.checkpoint
    assert states_equal(again, model)
    assert (cached.val_accuracy, cached.test_accuracy) == (result.val_accuracy, result.test_accuracy)


def test_seeded_training_is_deterministic_and_keyed(digits, tmp_path: Path) -> None:
    first, r1 = load_or_train("cnn", digits, config=QUICK, cache_dir=tmp_path / "a", progress=False)
    second, r2 = load_or_train("cnn", digits, config=QUICK, cache_dir=tmp_path / "b", progress=False)
    assert not r1.cached and not r2.cached
    assert states_equal(first, second)
    assert Path(r1.checkpoint).name == Path(r2.checkpoint).name

    other, r3 = load_or_train("cnn", digits, config=QUICK, seed=1, cache_dir=tmp_path / "a", progress=False)
    longer = TrainConfig(epochs=2)
    _, r4 = load_or_train("cnn", digits, config=longer, cache_dir=tmp_path / "a", progress=False)
    assert not r3.cached and not r4.cached
    assert len({r1.checkpoint, r3.checkpoint, r4.checkpoint}) == 3
    assert not states_equal(first, other)


def test_load_or_train_leaves_the_global_generator_alone(digits, tmp_path: Path) -> None:
    """The seed goes into a forked generator: the caller's draws are those it would make without the call,
    and the trained weights are the same whatever the caller's generator held."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first, _ = load_or_train("cnn", digits, config=QUICK, seed=2, cache_dir=tmp_path / "a", progress=False)
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(999)
    second, _ = load_or_train("cnn", digits, config=QUICK, seed=2, cache_dir=tmp_path / "b", progress=False)
    assert states_equal(first, second)


def test_corrupt_cache_file_is_retrained(digits, tmp_path: Path) -> None:
    trained, result = load_or_train("cnn", digits, config=QUICK, cache_dir=tmp_path, progress=False)
    path = Path(result.checkpoint)
    path.write_bytes(b"\x00garbage, not a state_dict")

    retrained, again = load_or_train("cnn", digits, config=QUICK, cache_dir=tmp_path, progress=False)

    assert not again.cached
    assert again.checkpoint == result.checkpoint
    assert states_equal(retrained, trained)
    reloaded = load_checkpoint(build_model("cnn", in_channels=1, num_classes=10), path)  # overwritten, valid
    assert states_equal(reloaded, trained)
    _, third = load_or_train("cnn", digits, config=QUICK, cache_dir=tmp_path, progress=False)
    assert third.cached


def test_foreign_cache_file_is_retrained(digits, tmp_path: Path) -> None:
    trained, result = load_or_train("cnn", digits, config=QUICK, cache_dir=tmp_path, progress=False)
    torch.save(build_model("resnet20", in_channels=1, num_classes=10).state_dict(), result.checkpoint)

    retrained, again = load_or_train("cnn", digits, config=QUICK, cache_dir=tmp_path, progress=False)

    assert not again.cached
    assert states_equal(retrained, trained)


@pytest.mark.parametrize("field, bad", [("epochs", -1), ("batch_size", 0), ("lr", 0.0)])
def test_bad_train_config(field: str, bad: float) -> None:
    with pytest.raises(ConfigError, match=rf"{field} must be .*got {bad}"):
        TrainConfig(**{field: bad})


def test_resuming_the_schedule_at_an_epoch_replays_the_full_run(digits) -> None:
    """``start_epoch`` (lottery-ticket rewinding) sees the same batches, shifts and learning rates.

    Without momentum SGD has no state, so resuming from the epoch-2 weights must give the full run's
    weights bit for bit; a wrong replay (data order, augmentation draws, scheduler steps) would not.
    resnet20: no dropout, whose draws come from the global generator, not the training seed.
    """
    import copy

    config = TrainConfig(epochs=4, momentum=0.0, lr=0.05, schedule="cosine")  # onecycle cycles momentum
    torch.manual_seed(0)
    full = build_model("resnet20", in_channels=1, num_classes=10)
    snapshots = {}
    train(full, digits.train, config, seed=3, progress=False,
          on_epoch=lambda epoch, model, loss: snapshots.setdefault(epoch, copy.deepcopy(model.state_dict())))
    assert sorted(snapshots) == [1, 2, 3, 4]
    resumed = build_model("resnet20", in_channels=1, num_classes=10)
    resumed.load_state_dict(snapshots[2])
    train(resumed, digits.train, config, seed=3, progress=False, start_epoch=2)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    other = build_model("resnet20", in_channels=1, num_classes=10)
    other.load_state_dict(snapshots[2])
    train(other, digits.train, config, seed=3, progress=False, start_epoch=1)  # a wrong replay point
    assert not all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), other.state_dict().values()))


def test_an_interrupted_training_resumes_at_its_last_epoch_with_the_same_weights(digits, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """Each epoch is checkpointed: a training killed after epoch 1 of 3 resumes at epoch 2, and ends with the
    weights of an uninterrupted run (cnn has dropout: the generator's state is part of the checkpoint)."""
    import amc.train as train_module

    config = TrainConfig(epochs=3)
    whole, _ = load_or_train("cnn", digits, config=config, cache_dir=tmp_path / "whole", progress=False)

    real_train = train_module.train
    epochs_seen: list[int] = []

    def killed_after_one_epoch(*args, on_optimizer, **kwargs):
        def save_then_die(done, optimizer):
            on_optimizer(done, optimizer)
            raise KeyboardInterrupt

        return real_train(*args, on_optimizer=save_then_die, **kwargs)

    monkeypatch.setattr(train_module, "train", killed_after_one_epoch)
    with pytest.raises(KeyboardInterrupt):
        load_or_train("cnn", digits, config=config, cache_dir=tmp_path / "cut", progress=False)
    assert [p.name.endswith(".partial.pt") for p in (tmp_path / "cut").iterdir()] == [True]

    def counting(*args, start_epoch, on_epoch=None, **kwargs):
        def seen(done, model, loss):
            epochs_seen.append(done)

        return real_train(*args, start_epoch=start_epoch, on_epoch=seen, **kwargs)

    monkeypatch.setattr(train_module, "train", counting)
    resumed, result = load_or_train("cnn", digits, config=config, cache_dir=tmp_path / "cut", progress=False)
    assert epochs_seen == [2, 3]
    assert not result.cached
    assert states_equal(resumed, whole)
    assert [p.name for p in (tmp_path / "cut").iterdir()] == [Path(result.checkpoint).name]  # partial removed


def test_an_unreadable_partial_training_is_ignored(digits, tmp_path: Path) -> None:
    _, first = load_or_train("cnn", digits, config=QUICK, cache_dir=tmp_path / "a", progress=False)
    partial = tmp_path / "b" / Path(first.checkpoint).with_suffix(".partial.pt").name
    partial.parent.mkdir()
    partial.write_bytes(b"not a checkpoint")
    _, again = load_or_train("cnn", digits, config=QUICK, cache_dir=tmp_path / "b", progress=False)
    assert not again.cached
    assert not partial.exists()
