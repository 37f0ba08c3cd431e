"""``tiny-lm``: a small GPT-style decoder language model in pure PyTorch (for tests, demos and benchmarks).

Pre-norm transformer blocks (Radford et al. 2019, GPT-2; the layout of nanoGPT), with every projection an
``nn.Linear`` named as Llama's are, so that per-layer sparsity code treats it like a Hugging Face decoder::

    tok_emb (V, D) + pos_emb (T, D)
    blocks.i:  x = x + attn.o_proj(causal_attention(attn.q_proj, attn.k_proj, attn.v_proj)(norm1(x)))
               x = x + mlp.down_proj(gelu(mlp.up_proj(norm2(x))))
    norm_f, head (D -> V; its weight is tok_emb's unless tied=False)

``forward(ids)`` takes int64 token ids ``(B, T)``, ``T <= context``, and returns next-token logits
``(B, T, V)``: position ``t`` predicts token ``t + 1`` (:mod:`amc.evaluation.lm_scores`); float ids (the
project's example inputs) are read as ids clamped into the vocabulary. Attention is
written as matmuls with a causal mask (no fused kernel), as the ``hf:`` loader's ``eager`` attention is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amc.errors import ConfigError, ModelError


@dataclass(frozen=True)
class TinyLMConfig:
    """Shape of a :class:`TinyLM`.

    Attributes:
        vocab_size: Token ids ``V``.
        context: Longest sequence ``T`` (learned position embeddings).
        dim: Width ``D``.
        depth: Transformer blocks.
        heads: Attention heads (``dim`` must divide by it).
        mlp_ratio: Hidden width of the MLP over ``dim``.
        tied: The output head shares the token embedding's weight (GPT-2's choice).
    """

    vocab_size: int = 2048
    context: int = 128
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    tied: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "dim", "depth", "heads", "mlp_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"tiny-lm {name}={value!r} must be a positive integer")
        if self.dim % self.heads:
            raise ConfigError(f"tiny-lm dim={self.dim} must be a multiple of heads={self.heads}")


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position ``t`` sees positions ``<= t``."""

    def __init__(self, dim: int, heads: int, context: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        mask = torch.ones(context, context, dtype=torch.bool).triu(1)  # True above the diagonal: the future
        self.register_buffer("future", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        h = self.heads

        def split(y: Tensor) -> Tensor:
            return y.view(b, t, h, d // h).transpose(1, 2)  # (B, H, T, D/H)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // h)  # (B, H, T, T)
        scores = scores.masked_fill(self.future[:t, :t], float("-inf"))
        y = scores.softmax(dim=-1) @ v  # (B, H, T, D/H)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up_proj = nn.Linear(dim, hidden)
        self.down_proj = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))


class Block(nn.Module):
    """One pre-norm transformer block: attention, then MLP, each around a residual connection."""

    def __init__(self, config: TinyLMConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.dim)
        self.attn = CausalSelfAttention(config.dim, config.heads, config.context)
        self.norm2 = nn.LayerNorm(config.dim)
        self.mlp = MLP(config.dim, config.mlp_ratio * config.dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    """The decoder described in the module docstring; ``forward(ids (B, T)) -> logits (B, T, V)``."""

    def __init__(self, config: TinyLMConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.dim)
        self.pos_emb = nn.Embedding(config.context, config.dim)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm_f = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2: residual projections scaled down by the depth
            for proj in (block.attn.o_proj, block.mlp.down_proj):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * config.depth))
        if config.tied:
            self.head.weight = self.tok_emb.weight

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, ids: Tensor) -> Tensor:
        t = ids.shape[1]
        if t > self.config.context:
            raise ValueError(f"tiny-lm reads at most context={self.config.context} tokens, got {t}; cut the "
                             "windows shorter or build it with a larger context")
        if ids.is_floating_point():  # the project's float example inputs (latency timing, export): read as ids
            ids = ids.long().clamp(0, self.config.vocab_size - 1)
        x = self.tok_emb(ids) + self.pos_emb.weight[:t]  # (B, T, D)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm_f(x))  # (B, T, V)


def tiny_lm(*, vocab_size: int = 2048, context: int = 128, dim: int = 128, depth: int = 4, heads: int = 4,
            mlp_ratio: int = 4, tied: bool = True) -> TinyLM:
    """The built-in decoder LM (:class:`TinyLM`); the defaults have ~1.1 M parameters (0.26 M of them the
    shared embedding)."""
    return TinyLM(TinyLMConfig(vocab_size=vocab_size, context=context, dim=dim, depth=depth, heads=heads,
                               mlp_ratio=mlp_ratio, tied=tied))


LANGUAGE_MODELS: dict[str, Callable[..., nn.Module]] = {"tiny-lm": tiny_lm}


def build_lm(name: str, *, vocab_size: int | None = None, **kwargs: object) -> nn.Module:
    """A decoder LM whose ``forward(ids (B, T))`` returns logits ``(B, T, V)``.

    Args:
        name: A key of :data:`LANGUAGE_MODELS` (random init) or ``hf:PATH``, a local Hugging Face causal LM
            folder (:func:`amc.models.hf_causal.load_causal_lm`, its saved weights).
        vocab_size: The data's vocabulary: a built-in model is built with it; an ``hf:`` model must cover it.
        **kwargs: The factory's arguments (``dim``, ``depth``, ...) or ``from_pretrained``'s.

    Raises:
        ModelError: An unknown name, arguments the factory does not take, or an ``hf:`` model whose
            vocabulary is smaller than the data's.
    """
    if name.startswith("hf:"):
        from amc.models.hf_causal import load_causal_lm

        model = load_causal_lm(name[3:], **kwargs)
        if vocab_size is not None and model.config.vocab_size < vocab_size:
            raise ModelError(f"--model {name} has {model.config.vocab_size} token ids, the data {vocab_size}: "
                             "tokenize the data with the model's own tokenizer (its folder)")
        return model
    if name not in LANGUAGE_MODELS:
        raise ModelError(f"unknown language model {name!r}: use one of {sorted(LANGUAGE_MODELS)} or 'hf:PATH' (a "
                         "local save_pretrained folder of a causal LM)")
    args = {**({} if vocab_size is None else {"vocab_size": vocab_size}), **kwargs}
    try:
        return LANGUAGE_MODELS[name](**args)
    except TypeError as exc:
        raise ModelError(f"model {name!r} does not take {sorted(args)} ({exc}); remove the unknown ones") from None


__all__ = ["LANGUAGE_MODELS", "TinyLM", "TinyLMConfig", "build_lm", "tiny_lm"]
