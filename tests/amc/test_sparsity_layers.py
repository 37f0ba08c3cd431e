"""Layer discovery for sparsity (amc.sparsity.layers) and calibration statistics (amc.sparsity.calibrate), on a
tiny random-init Llama (grouped-query attention), GPT-2 (Conv1D) and a plain module of linears.

The builders here are shared by the other test_sparsity_* files."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from amc.errors import ConfigError, DataError, UnsupportedModelError
from amc.sparsity import calibrate, discover_sparse

pytest.importorskip("transformers")

VOCAB = 64


def tiny_llama() -> nn.Module:
    """LlamaForCausalLM: 2 blocks of 32 wide, 4 query heads in 2 key/value groups, MLP 64."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32,
                         attn_implementation="eager")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return LlamaForCausalLM(config).eval()


def tiny_gpt2() -> nn.Module:
    """GPT2LMHeadModel: 2 blocks of 32 wide, 4 heads (Conv1D projections), head tied to the embedding."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0,
                        eos_token_id=0, attn_implementation="eager")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return GPT2LMHeadModel(config).eval()


class PlainLM(nn.Module):
    """Embedding, two blocks of two linears in a ModuleList, a separate output linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.blocks = nn.ModuleList(nn.ModuleDict({"up": nn.Linear(16, 32), "down": nn.Linear(32, 16)})
                                    for _ in range(2))
        self.out = nn.Linear(16, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = x + block["down"](torch.relu(block["up"](x)))
        return self.out(x)


def token_batches(n: int = 2, *, seed: int = 0, batch: int = 4, length: int = 16) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (batch, length), generator=generator) for _ in range(n)]


def test_llama_layers_are_the_seven_projections_of_each_block_with_gqa_shapes() -> None:
    layout = discover_sparse(tiny_llama())
    names = [x.name for x in layout.layers]
    roles = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
             "mlp.up_proj", "mlp.down_proj"]
    assert names == [f"model.layers.{b}.{r}" for b in range(2) for r in roles]
    shapes = {x.name.split(".", 3)[-1]: (x.out_features, x.in_features) for x in layout.layers[:7]}
    assert shapes["self_attn.k_proj"] == (16, 32) and shapes["self_attn.v_proj"] == (16, 32)  # 2 kv groups of 8
    assert shapes["mlp.down_proj"] == (32, 64)
    assert [u.name for u in layout.units] == ["model.layers.0", "model.layers.1"]
    assert layout.units[0].numel == 32 * 32 * 2 + 16 * 32 * 2 + 64 * 32 * 3 == layout.total // 2
    assert not any(x.transposed for x in layout.layers)


def test_gpt2_conv1d_layers_are_found_transposed_and_the_tied_head_is_not() -> None:
    layout = discover_sparse(tiny_gpt2(), per="layer")
    assert [x.name for x in layout.layers[:4]] == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                                                   "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]
    assert len(layout.layers) == 8 and all(x.transposed for x in layout.layers)
    c_attn = layout.layers[0]
    assert (c_attn.in_features, c_attn.out_features) == (32, 96)
    assert [u.members for u in layout.units] == [(x.name,) for x in layout.layers]  # one decision per layer


def test_a_plain_module_groups_by_index_and_takes_exclusions() -> None:
    layout = discover_sparse(PlainLM(), exclude=["out"])
    assert [u.members for u in layout.units] == [("blocks.0.up", "blocks.0.down"), ("blocks.1.up", "blocks.1.down")]
    assert discover_sparse(PlainLM()).units[-1].members == ("out",)  # no head known: a layer of its own


def test_a_wrapped_model_and_the_built_in_lm_leave_their_heads_dense() -> None:
    class Wrapper(nn.Module):  # as amc.models.hf_causal.CausalLMLogits holds a transformers model in .inner
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=ids).logits

    wrapped = discover_sparse(Wrapper(tiny_llama()))
    assert len(wrapped.layers) == 14 and not any("lm_head" in x.name for x in wrapped.layers)
    lm = pytest.importorskip("amc.models.lm")
    for tied in (True, False):
        model = lm.tiny_lm(vocab_size=VOCAB, context=16, dim=16, depth=2, heads=2, tied=tied)
        layout = discover_sparse(model)
        assert [u.name for u in layout.units] == ["blocks.0", "blocks.1"]
        assert all(x.name.startswith("blocks.") for x in layout.layers)
        stats = calibrate(model, layout, token_batches(1))
        assert set(stats) == {x.name for x in layout.layers}


def test_bad_settings_are_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="per must be one of"):
        discover_sparse(tiny_llama(), per="head")
    with pytest.raises(UnsupportedModelError, match="no prunable linear layer"):
        discover_sparse(nn.Sequential(nn.Embedding(4, 4)))


def test_calibration_norms_and_hessians_are_those_of_the_layer_inputs() -> None:
    model = tiny_llama()
    layout = discover_sparse(model)
    batches = token_batches()
    stats = calibrate(model, layout, batches, hessian=True)
    seen: list[torch.Tensor] = []
    module = model.get_submodule("model.layers.1.mlp.down_proj")
    handle = module.register_forward_hook(lambda m, inp, out: seen.append(inp[0].reshape(-1, 64)))
    with torch.no_grad():
        for batch in batches:
            model(batch)
    handle.remove()
    x = torch.cat(seen)  # (tokens, in)
    got = stats["model.layers.1.mlp.down_proj"]
    assert got.tokens == 2 * 4 * 16
    torch.testing.assert_close(got.norms, x.norm(dim=0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.hessian, x.t() @ x / x.shape[0], rtol=1e-4, atol=1e-6)
    assert calibrate(model, layout, batches)["model.layers.0.self_attn.q_proj"].hessian is None


def test_calibration_refuses_float_batches_and_an_empty_set() -> None:
    model = tiny_gpt2()
    layout = discover_sparse(model)
    with pytest.raises(DataError, match="token ids"):
        calibrate(model, layout, [torch.rand(2, 8)])
    with pytest.raises(DataError, match="no calibration batch"):
        calibrate(model, layout, [])
