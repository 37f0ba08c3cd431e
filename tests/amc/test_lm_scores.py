"""Tests for the language-model scores: held-out perplexity and KL divergence to the dense model."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from amc.errors import ConfigError
from amc.evaluation.lm_scores import DenseReference, kl_to_dense, next_token_nll, perplexity
from amc.models import build_lm

VOCAB = 53


@pytest.fixture(scope="module")
def model() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_lm("tiny-lm", vocab_size=VOCAB, context=16, dim=32, depth=2).eval()
        with torch.no_grad():  # larger weights than the init's: peaked predictions, as a trained model makes
            for p in model.parameters():
                p.normal_(0, 0.3)
        return model


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    return torch.randint(0, VOCAB, (7, 16), generator=torch.Generator().manual_seed(0))


def zero_smallest(model: nn.Module, fraction: float) -> nn.Module:
    """A copy with the ``fraction`` smallest-magnitude weights of every block's linear layer set to 0."""
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in pruned.named_modules():
            if name.startswith("blocks.") and isinstance(module, nn.Linear):
                w = module.weight
                k = int(fraction * w.numel())
                w[w.abs() <= w.abs().flatten().kthvalue(k).values] = 0
    return pruned


def test_perplexity_is_exp_of_the_cross_entropy_by_hand(model, windows) -> None:
    with torch.no_grad():
        logits = model(windows)  # (N, T, V)
        by_hand = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), windows[:, 1:].reshape(-1))
    assert next_token_nll(model, windows) == pytest.approx(by_hand.item(), rel=1e-6)
    assert perplexity(model, windows) == pytest.approx(math.exp(by_hand.item()), rel=1e-6)
    assert perplexity(model, windows, batch_size=3) == pytest.approx(perplexity(model, windows), rel=1e-6)
    assert perplexity(model, windows) > VOCAB  # random weights, random ids: worse than a uniform guess


def test_kl_is_zero_for_the_dense_model_and_grows_with_zeroed_weights(model, windows) -> None:
    reference = DenseReference.compute(model, windows, batch_size=4)
    assert reference.log_probs.shape == (7, 16, VOCAB)
    assert abs(kl_to_dense(model, reference)) < 1e-6
    kls = [kl_to_dense(zero_smallest(model, f), reference, batch_size=2) for f in (0.3, 0.6, 0.9)]
    assert 1e-6 < kls[0] < kls[1] < kls[2], kls
    half = DenseReference.compute(model, windows, dtype=torch.float16)
    assert half.log_probs.dtype == torch.float16
    assert kl_to_dense(zero_smallest(model, 0.6), half) == pytest.approx(kls[1], rel=0.01)


def test_the_scores_leave_the_model_as_they_found_it(model, windows) -> None:
    model.train()
    try:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        perplexity(model, windows)
        kl_to_dense(model, DenseReference.compute(model, windows))
        assert model.training
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    finally:
        model.eval()


def test_bad_inputs_are_refused(model, windows) -> None:
    with pytest.raises(ConfigError, match="int64 token ids"):
        perplexity(model, windows.float())
    with pytest.raises(ConfigError, match="batch_size=0"):
        perplexity(model, windows, batch_size=0)
    with pytest.raises(ConfigError, match="T >= 2"):
        perplexity(model, windows[:, :1])
    with pytest.raises(ConfigError, match="max_bytes"):
        DenseReference.compute(model, windows, max_bytes=1000)
    other = build_lm("tiny-lm", vocab_size=VOCAB + 1, context=16, dim=32, depth=1)
    with pytest.raises(ConfigError, match="do not match the dense reference"):
        kl_to_dense(other, DenseReference.compute(model, windows))


def test_perplexity_of_a_hugging_face_model_is_its_own_loss() -> None:
    transformers = pytest.importorskip("transformers")
    from amc.models.hf_causal import CausalLMLogits

    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32,
                                      attn_implementation="eager")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        inner = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loss = inner(input_ids=ids, labels=ids).loss  # transformers shifts the labels itself
    assert perplexity(CausalLMLogits(inner), ids) == pytest.approx(math.exp(loss.item()), rel=1e-5)
