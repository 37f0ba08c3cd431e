"""Tests for the decoder LMs: the built-in tiny-lm and causal LMs loaded from a local Hugging Face folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from amc.errors import ConfigError, ModelError
from amc.models import LANGUAGE_MODELS, build_lm
from amc.models.lm import TinyLM

VOCAB = 61


def small_lm(**kwargs) -> TinyLM:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_lm("tiny-lm", vocab_size=VOCAB, **{"context": 16, "dim": 32, "depth": 2, **kwargs}).eval()


def test_tiny_lm_is_causal_with_linear_projections() -> None:
    model = small_lm()
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids)
        changed = ids.clone()
        changed[:, 9] = (changed[:, 9] + 1) % VOCAB
        after = model(changed)
    assert logits.shape == (2, 16, VOCAB)
    torch.testing.assert_close(after[:, :9], logits[:, :9], rtol=0, atol=0)  # the past never sees the future
    assert not torch.allclose(after[:, 9:], logits[:, 9:])
    linear = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for i in range(2):
        assert {f"blocks.{i}.attn.{p}_proj" for p in "qkvo"} | {f"blocks.{i}.mlp.up_proj",
                                                                f"blocks.{i}.mlp.down_proj"} <= linear
    assert model.head.weight is model.tok_emb.weight  # tied
    assert small_lm(tied=False).head.weight is not small_lm(tied=False).tok_emb.weight
    with torch.no_grad():  # float ids (the project's example inputs) read as ids
        torch.testing.assert_close(model(ids.float()), logits)
    default = build_lm("tiny-lm")
    assert 0.5e6 < sum(p.numel() for p in default.parameters()) < 2e6
    assert "tiny-lm" in LANGUAGE_MODELS


def test_tiny_lm_refuses_bad_shapes_and_names() -> None:
    with pytest.raises(ValueError, match="context=16"):
        small_lm()(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ConfigError, match="multiple of heads"):
        build_lm("tiny-lm", dim=30, heads=4)
    with pytest.raises(ModelError, match="'gpt-9'"):
        build_lm("gpt-9")
    with pytest.raises(ModelError, match="width"):
        build_lm("tiny-lm", width=3)


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32))


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32))


@pytest.mark.parametrize("build", [_llama, _gpt2], ids=["llama-gqa", "gpt2"])
def test_a_saved_causal_lm_loads_back_with_the_same_logits(build, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from amc.models.hf_causal import CausalLMLogits, load_causal_lm

    with torch.random.fork_rng():
        torch.manual_seed(0)
        original = build().eval()
    original.save_pretrained(tmp_path)
    model = build_lm(f"hf:{tmp_path}", vocab_size=VOCAB)
    assert isinstance(model, CausalLMLogits) and not model.training
    assert model.config._attn_implementation == "eager"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids)
        torch.testing.assert_close(logits, original(input_ids=ids).logits)
        torch.testing.assert_close(model(ids.float()), logits)
    assert logits.shape == (2, 12, VOCAB)
    if build is _llama:
        attn = model.inner.model.layers[0].self_attn
        assert attn.k_proj.out_features == attn.q_proj.out_features // 2  # grouped-query attention kept
    model.save_pretrained(tmp_path / "again")
    again = load_causal_lm(tmp_path / "again")
    with torch.no_grad():
        torch.testing.assert_close(again(ids), logits)


def test_a_folder_that_is_no_causal_lm_is_refused(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from amc.models.hf_causal import load_causal_lm

    with pytest.raises(ModelError, match="no config.json"):
        load_causal_lm(tmp_path)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                    image_size=8, patch_size=4)
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    with pytest.raises(ModelError, match="'vit' model.*AutoModelForCausalLM"):
        load_causal_lm(tmp_path / "vit")
    _gpt2().save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ModelError, match=f"{VOCAB} token ids, the data 5000"):
        build_lm(f"hf:{tmp_path / 'gpt2'}", vocab_size=5000)
