"""A small ConvNeXt (Liu et al., 2022) for small images: depthwise 7x7, LayerNorm, inverted MLP and
layer scale, with a 2x2 patchify stem and 2x2 downsampling between stages."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a ``(B, C, H, W)`` tensor."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """``x + gamma * mlp(ln(dwconv(x)))`` with the MLP on channels-last tokens."""

    def __init__(self, dim: int, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.fc2(self.act(self.fc1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """ConvNeXt with ``len(dims)`` stages.

    Args:
        in_channels: Channels of the input images.
        num_classes: Number of output classes.
        dims: Channels per stage. depths: Blocks per stage.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, *, dims: tuple[int, ...] = (32, 64, 128),
                 depths: tuple[int, ...] = (1, 1, 2)) -> None:
        super().__init__()
        if len(dims) != len(depths):
            raise ValueError(f"dims {dims} and depths {depths} must have one entry per stage")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, dims[0], 2, stride=2), LayerNorm2d(dims[0]))
        stages: list[nn.Module] = []
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            layers: list[nn.Module] = []
            if i > 0:  # ceil_mode-like padding keeps odd sizes (7x7 -> 4x4)
                layers += [LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, stride=2, padding=1)]
            layers += [ConvNeXtBlock(dim) for _ in range(depth)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))  # (B, C, H', W')
        return self.head(self.norm(x.mean(dim=(2, 3))))


def convnext(in_channels: int = 1, num_classes: int = 10) -> ConvNeXt:
    """A small ConvNeXt: stages of 32, 64 and 128 channels with 1, 1 and 2 blocks."""
    return ConvNeXt(in_channels, num_classes)
