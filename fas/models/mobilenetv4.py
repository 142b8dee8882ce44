"""MobileNetV4-Conv-Small (Qin et al., 2024), written out here instead of taken from timm.

timm has this network, but timm requires torchvision, whose PyPI build pulls a multi-GB CUDA torch
on a CPU machine. The block layout below is timm's `mobilenetv4_conv_small` arch definition; no
ImageNet weights are used, so bit-exact timm parity is not a goal. The Fourier head taps the
stride-8 map (after stage 1), as it does on MiniFASNet.
"""

from __future__ import annotations

from torch import Tensor, nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor` without losing more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UniversalInvertedBottleneck(nn.Module):
    """Optional start depthwise -> 1x1 expand -> optional middle depthwise -> 1x1 project."""

    def __init__(self, in_ch: int, out_ch: int, start_kernel: int, mid_kernel: int, stride: int, expand: float) -> None:
        super().__init__()
        mid_ch = make_divisible(in_ch * expand)
        start_stride = 1 if mid_kernel else stride
        self.start_dw = (
            conv_bn(in_ch, in_ch, start_kernel, start_stride, groups=in_ch, act=False)
            if start_kernel
            else nn.Identity()
        )
        self.expand = conv_bn(in_ch, mid_ch, 1)
        self.mid_dw = conv_bn(mid_ch, mid_ch, mid_kernel, stride, groups=mid_ch) if mid_kernel else nn.Identity()
        self.project = conv_bn(mid_ch, out_ch, 1, act=False)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.mid_dw(self.expand(self.start_dw(x))))
        return x + out if self.residual else out


# (out channels, start dw kernel, middle dw kernel, stride, expansion) per block of stages 2 and 3.
STAGE2 = [(96, 5, 5, 2, 3.0)] + [(96, 0, 3, 1, 2.0)] * 4 + [(96, 3, 0, 1, 4.0)]
STAGE3 = [(128, 3, 3, 2, 6.0), (128, 5, 5, 1, 4.0), (128, 0, 5, 1, 4.0), (128, 0, 5, 1, 3.0)] + [
    (128, 0, 3, 1, 4.0)
] * 2
FT_TAP_CHANNELS = 64


def _stage(in_ch: int, spec: list[tuple[int, int, int, int, float]]) -> nn.Sequential:
    blocks = []
    for out_ch, start_kernel, mid_kernel, stride, expand in spec:
        blocks.append(UniversalInvertedBottleneck(in_ch, out_ch, start_kernel, mid_kernel, stride, expand))
        in_ch = out_ch
    return nn.Sequential(*blocks)


class MobileNetV4ConvSmall(nn.Module):
    """MobileNetV4-Conv-Small with a `features` (stride 8) / `classify` split like MiniFASNet.

    `embedding_size` is the width of the 1x1 head conv after global pooling (1280 in the paper).
    """

    def __init__(
        self,
        input_size: int = 80,
        num_classes: int = 2,
        embedding_size: int = 1280,
        dropout: float = 0.2,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.stem = conv_bn(in_channels, 32, 3, stride=2)
        self.stage0 = nn.Sequential(conv_bn(32, 32, 3, stride=2), conv_bn(32, 32, 1))
        self.stage1 = nn.Sequential(conv_bn(32, 96, 3, stride=2), conv_bn(96, FT_TAP_CHANNELS, 1))
        self.stage2 = _stage(FT_TAP_CHANNELS, STAGE2)
        self.stage3 = _stage(96, STAGE3)
        self.stage4 = conv_bn(128, 960, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Conv2d(960, embedding_size, 1), nn.ReLU(inplace=True), nn.Flatten(1))
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(embedding_size, num_classes)

    # Child modules by stage, from the input (see MiniFASNet.stages).
    stages = (("stem",), ("stage0",), ("stage1",), ("stage2",), ("stage3",), ("stage4", "head", "classifier"))

    @property
    def feature_channels(self) -> int:
        return FT_TAP_CHANNELS

    def features(self, x: Tensor) -> Tensor:
        return self.stage1(self.stage0(self.stem(x)))

    def classify(self, features: Tensor) -> Tensor:
        x = self.stage4(self.stage3(self.stage2(features)))
        return self.classifier(self.drop(self.head(self.pool(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x))
