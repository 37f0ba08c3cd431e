"""Tests for amc.lm_train: the built-in LM trains on the code corpus, is cached and resumes exactly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import amc.lm_train as lm_train
from amc.data.lm_tokens import LMDataConfig, load_lm_data
from amc.errors import ConfigError, ModelError
from amc.evaluation.lm_scores import perplexity
from amc.lm_train import LMTrainConfig, lm_cache_path, load_or_train_lm

TINY = {"dim": 32, "depth": 1, "heads": 2}
QUICK = LMTrainConfig(steps=12, batch_size=4, warmup=2, checkpoint_every=5, eval_windows=8, lr=1e-2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_lm_data(LMDataConfig(seq_len=32, vocab_size=300, calibration=0.2, heldout=0.2, max_bytes=120_000),
                        cache_dir=tmp_path_factory.mktemp("lm-data"))


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_lowers_the_held_out_perplexity_and_is_cached(data, tmp_path: Path) -> None:
    model, result = load_or_train_lm("tiny-lm", data, config=QUICK, model_kwargs=TINY, cache_dir=tmp_path,
                                     progress=False)
    assert not result.cached and not model.training
    assert Path(result.checkpoint) == lm_cache_path("tiny-lm", data, config=QUICK, cache_dir=tmp_path,
                                                    model_kwargs={"vocab_size": 300, "context": 32, **TINY})
    held = data.heldout.windows(32, limit=8)
    assert result.heldout_perplexity == pytest.approx(perplexity(model, held), rel=1e-9)
    assert result.heldout_perplexity < 0.5 * data.vocab_size  # the untrained model is about uniform (~300)
    assert math.log(data.vocab_size) > result.train_loss
    again, cached = load_or_train_lm("tiny-lm", data, config=QUICK, model_kwargs=TINY, cache_dir=tmp_path,
                                     progress=False)
    assert cached.cached and states_equal(again, model)
    assert cached.heldout_perplexity == result.heldout_perplexity and math.isnan(cached.train_loss)
    other, _ = load_or_train_lm("tiny-lm", data, config=QUICK, model_kwargs=TINY, cache_dir=tmp_path, seed=1,
                                progress=False)
    assert not states_equal(other, model)  # another seed: another model, another file
    assert len(list(tmp_path.glob("tiny-lm-*.pt"))) == 2 and not list(tmp_path.glob("*.partial.pt"))


def test_an_interrupted_training_resumes_to_the_same_weights(data, tmp_path: Path, monkeypatch) -> None:
    full, _ = load_or_train_lm("tiny-lm", data, config=QUICK, model_kwargs=TINY, cache_dir=tmp_path / "full",
                               progress=False)
    original = lm_train.train_lm

    def interrupted(*args, on_step, **kwargs):
        def stop_at_7(done, optimizer, generator):
            on_step(done, optimizer, generator)
            if done == 7:
                raise KeyboardInterrupt

        return original(*args, on_step=stop_at_7, **kwargs)

    monkeypatch.setattr(lm_train, "train_lm", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_or_train_lm("tiny-lm", data, config=QUICK, model_kwargs=TINY, cache_dir=tmp_path / "cut", progress=False)
    assert [p.name.endswith(".partial.pt") for p in (tmp_path / "cut").iterdir()] == [True]
    starts = []

    def recorded(*args, start_step, **kwargs):
        starts.append(start_step)
        return original(*args, start_step=start_step, **kwargs)

    monkeypatch.setattr(lm_train, "train_lm", recorded)
    resumed, result = load_or_train_lm("tiny-lm", data, config=QUICK, model_kwargs=TINY, cache_dir=tmp_path / "cut",
                                       progress=False)
    assert starts == [5]  # the last checkpoint before the interruption
    assert not result.cached and states_equal(resumed, full)  # with the optimiser's and the generator's state


def test_bad_settings_are_refused(data, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="steps=-1"):
        LMTrainConfig(steps=-1)
    with pytest.raises(ConfigError, match="batch_size=0"):
        LMTrainConfig(batch_size=0)
    with pytest.raises(ModelError, match="cannot train language model 'hf:x'"):
        load_or_train_lm("hf:x", data, cache_dir=tmp_path)
    config = LMTrainConfig(steps=100, warmup=10, lr=1.0)
    assert config.lr_at(0) == pytest.approx(0.1) and config.lr_at(9) == pytest.approx(1.0)
    assert config.lr_at(10) == pytest.approx(1.0) and config.lr_at(100) == pytest.approx(0.1)
