"""A small Vision Transformer (Dosovitskiy et al., 2021) for small images: patch 4, class token.

Attention is written as two explicit matmuls rather than ``F.scaled_dot_product_attention``: on CPU
that call runs ``aten._scaled_dot_product_flash_attention_for_cpu``, which
``torch.utils.flop_counter.FlopCounterMode`` counts as 0 FLOPs, so the model's FLOPs would leave out
attention. The explicit form is counted (``aten.bmm``), exports with ``torch.export`` and ONNX, and is
the timm layout Torch-Pruning prunes by whole heads (a fused ``qkv`` Linear and a ``num_heads``
attribute).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection.

    ``num_heads`` is read on every forward pass, so a pruner that removes whole heads only has to
    lower it; the head width is inferred from ``qkv``.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        head_dim = self.qkv.out_features // (3 * self.num_heads)
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, head_dim) each
        attn = (q * head_dim**-0.5) @ k.transpose(-2, -1)  # (B, heads, N, N)
        x = attn.softmax(dim=-1) @ v  # (B, heads, N, head_dim)
        return self.proj(x.transpose(1, 2).reshape(b, n, self.num_heads * head_dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """ViT with a class token and a learned position embedding.

    The position embedding holds ``max_tokens`` rows; an image of ``n`` patches uses the first ``n + 1``
    (the base model is trained on one image size, so each row is one grid position for it).

    Args:
        in_channels: Channels of the input images.
        num_classes: Number of output classes.
        dim: Embedding width. depth: Number of blocks. num_heads: Heads per block.
        mlp_ratio: MLP hidden width over ``dim``. patch: Patch size. max_tokens: Rows of the position
            embedding (patches + class token); 65 covers 32x32 images at patch 4.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, *, dim: int = 64, depth: int = 4,
                 num_heads: int = 4, mlp_ratio: float = 2.0, patch: int = 4, max_tokens: int = 65) -> None:
        super().__init__()
        self.patch = patch
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, max_tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, dim)
        x = torch.cat([cls, x], dim=1)
        x = x + self.pos_embed[:, : x.shape[1]]
        x = self.blocks(x)
        return self.head(self.norm(x[:, 0]))


def vit(in_channels: int = 1, num_classes: int = 10, dim: int = 64, depth: int = 4, num_heads: int = 4,
        mlp_ratio: float = 2.0) -> ViT:
    """A small ViT: patch 4, 4 blocks of 64 wide with 4 heads and an MLP of 128."""
    return ViT(in_channels, num_classes, dim=dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)
