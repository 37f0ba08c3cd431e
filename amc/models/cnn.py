"""A small VGG-style CNN for small images (8x8 digits up to 32x32 CIFAR)."""

from __future__ import annotations

from torch import Tensor, nn


def _conv_bn(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class VGGSmall(nn.Module):
    """conv-conv-pool, conv-conv-pool, conv, global pool, a hidden linear layer and the classifier.

    Args:
        in_channels: Channels of the input images.
        num_classes: Number of output classes.
        width: Channels of the first stage; later stages use 2x and 4x.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, *, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn(in_channels, w),
            *_conv_bn(w, w),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn(w, 2 * w),
            *_conv_bn(2 * w, 2 * w),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn(2 * w, 4 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(4 * w, 4 * w),
            nn.ReLU(inplace=True),
            nn.Dropout(0.2),
            nn.Linear(4 * w, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)  # (B, 4w, H/4, W/4)
        x = self.pool(x).flatten(1)  # (B, 4w)
        return self.classifier(x)


def cnn(in_channels: int = 1, num_classes: int = 10, width: int = 32) -> VGGSmall:
    """The default model: a small VGG-style CNN."""
    return VGGSmall(in_channels, num_classes, width=width)
