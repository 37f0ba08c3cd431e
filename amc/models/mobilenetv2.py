"""MobileNetV2 (Sandler et al., 2018) for small images: inverted residuals with depthwise convs.

The stem and the first downsampling stage use stride 1 so 28x28 and 32x32 inputs keep spatial size
where it matters, as CIFAR ports of MobileNetV2 do.
"""

from __future__ import annotations

from torch import Tensor, nn

# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2.
_CONFIG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _make_divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn(in_c: int, out_c: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_c, out_c, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_c),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, in_c: int, out_c: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_c * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn(in_c, hidden, 1))
        layers.append(_conv_bn(hidden, hidden, 3, stride, groups=hidden))  # depthwise
        layers.append(_conv_bn(hidden, out_c, 1, act=False))  # linear bottleneck
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_c == out_c

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 with a width multiplier.

    Args:
        in_channels: Channels of the input images.
        num_classes: Number of output classes.
        width_mult: Scales every layer's channels (rounded to multiples of 8).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, *, width_mult: float = 1.0) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        channels = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn(in_channels, channels, 3, 1)]
        for t, c, n, s in _CONFIG:
            out_c = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(channels, out_c, s if i == 0 else 1, t))
                channels = out_c
        layers.append(_conv_bn(channels, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)  # (B, last, H/8, W/8)
        return self.classifier(self.pool(x).flatten(1))


def mobilenetv2(in_channels: int = 3, num_classes: int = 10, width_mult: float = 1.0) -> MobileNetV2:
    return MobileNetV2(in_channels, num_classes, width_mult=width_mult)
