"""Small in-project models of the modern families (no torchvision): one per structure discovery meets."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from amc.models.convnext import ConvNeXtBlock, LayerNorm2d
from amc.models.vit import Attention, Mlp, ViT


def vit_small(in_channels: int = 3, num_classes: int = 5) -> ViT:
    """ViT with a class token and a position embedding: 2 blocks of 32 wide, 4 heads."""
    return ViT(in_channels, num_classes, dim=32, depth=2, num_heads=4, mlp_ratio=2.0, max_tokens=17)


class WindowAttentionNet(nn.Module):
    """A Swin-style block: attention within 2x2 windows of a 4x4 token grid, then an MLP."""

    def __init__(self, in_channels: int = 3, num_classes: int = 5, dim: int = 32, window: int = 2) -> None:
        super().__init__()
        self.window = window
        self.embed = nn.Conv2d(in_channels, dim, 2, stride=2)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=4)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 2 * dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        b, h, w, c = x.shape
        s = self.window
        win = x.reshape(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, c)
        win = win + self.attn(self.norm1(win))  # (B * windows, s*s, C)
        x = win.reshape(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h * w, c)
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))


class ConvNeXtNet(nn.Module):
    """A ConvNeXt stem and two blocks with layer scale."""

    def __init__(self, in_channels: int = 3, num_classes: int = 5, dim: int = 24) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, dim, 2, stride=2), LayerNorm2d(dim))
        self.blocks = nn.Sequential(ConvNeXtBlock(dim, layer_scale=0.5), ConvNeXtBlock(dim, layer_scale=0.5))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class ResNeXtNet(nn.Module):
    """A ResNeXt bottleneck: 1x1, grouped 3x3 (4 groups) with GroupNorm, 1x1, and the residual."""

    def __init__(self, in_channels: int = 3, num_classes: int = 5, c: int = 32, width: int = 32,
                 groups: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(c)
        self.conv1 = nn.Conv2d(c, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.gn2 = nn.GroupNorm(groups, width)
        self.conv3 = nn.Conv2d(width, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn0(self.stem(x)).relu()
        y = self.bn1(self.conv1(x)).relu()
        y = self.gn2(self.conv2(y)).relu()
        y = self.bn3(self.conv3(y))
        return self.fc((x + y).relu().mean((2, 3)))


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleNet(nn.Module):
    """A ShuffleNetV2 unit: split, a branch, concat, channel shuffle."""

    def __init__(self, in_channels: int = 3, num_classes: int = 5, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, c, 3, padding=1)
        half = c // 2
        self.branch = nn.Sequential(nn.Conv2d(half, half, 1), nn.BatchNorm2d(half), nn.ReLU(),
                                    nn.Conv2d(half, half, 3, padding=1, groups=half), nn.BatchNorm2d(half),
                                    nn.Conv2d(half, half, 1), nn.BatchNorm2d(half), nn.ReLU())
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.stem(x).chunk(2, dim=1)
        x = channel_shuffle(torch.cat([a, self.branch(b)], 1), 2)
        return self.fc(x.mean((2, 3)))


def shuffle_net(in_channels: int = 1, num_classes: int = 10) -> ShuffleNet:
    """A factory of a model discovery refuses (channel shuffle)."""
    return ShuffleNet(in_channels, num_classes)


class MhaNet(nn.Module):
    """nn.MultiheadAttention on conv tokens: Torch-Pruning prunes its head width, not its heads."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, dim: int = 16, hidden: int = 0) -> None:
        super().__init__()
        self.embed = nn.Conv2d(in_channels, dim, 2, stride=2)
        self.mha = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.hidden = nn.Linear(dim, hidden) if hidden else None
        self.head = nn.Linear(hidden or dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        x = x + self.mha(x, x, x, need_weights=False)[0]
        x = x.mean(1)
        if self.hidden is not None:
            x = self.hidden(x).relu()
        return self.head(x)


def mha_net(in_channels: int = 1, num_classes: int = 10) -> MhaNet:
    """Nothing prunable: the only hidden layer feeds the MultiheadAttention."""
    return MhaNet(in_channels, num_classes)


class MatmulNet(nn.Module):
    """Attention written inline in a module without num_heads: its matmuls scale with pruned channels."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Conv2d(in_channels, dim, 2, stride=2)
        self.q = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        q = self.q(x)
        x = (q @ q.transpose(1, 2)).softmax(-1) @ x
        return self.head(x.mean(1))
