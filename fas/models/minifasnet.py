"""MiniFASNet V1, V2, V1SE and V2SE (Minivision's Silent-Face-Anti-Spoofing).

Module and parameter names follow the original code exactly (`conv1.conv.weight`, `conv_4.model.3.
se_module.fc1.weight`, ..., `prob.weight`) so the published weights load without renaming. The
original describes widths as one flat 49-element "keep" list; here each stage is written out as its
output width and the expansion width of each of its blocks, which is the same network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class MiniFASNetWidths:
    """Expansion width of every depthwise block, per stage (the pruned channel lists)."""

    conv_23: int
    conv_3: tuple[int, ...]
    conv_34: int
    conv_4: tuple[int, ...]
    conv_45: int
    conv_5: tuple[int, ...]


# Read off the published checkpoints; V1 and V1SE share widths, as do V2 and V2SE.
V1_WIDTHS = MiniFASNetWidths(103, (13, 26, 13, 52), 231, (154, 52, 26, 52, 26, 26), 308, (26, 26))
V2_WIDTHS = MiniFASNetWidths(103, (13, 13, 13, 13), 231, (231, 52, 26, 77, 26, 26), 308, (26, 26))

STEM_WIDTH = 32
STAGE_WIDTHS = (64, 128, 128)  # output channels of conv_3, conv_4 and conv_5
HEAD_WIDTH = 512
FT_TAP_CHANNELS = STAGE_WIDTHS[1]  # conv_4 output feeds the Fourier head (stride 8)


def conv6_kernel_size(input_size: int) -> int:
    """Side of the final depthwise kernel, which spans the whole stride-16 map."""
    return (input_size + 15) // 16


class ConvBlock(nn.Module):
    """Conv + BatchNorm + PReLU (`Conv_block` in the original)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.prelu = nn.PReLU(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.prelu(self.bn(self.conv(x)))


class LinearBlock(nn.Module):
    """Conv + BatchNorm with no activation (`Linear_block` in the original)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class SEModule(nn.Module):
    """Squeeze-excitation with BatchNorm after both 1x1 convs, as in the original."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels // reduction)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.relu(self.bn1(self.fc1(self.avg_pool(x))))
        return x * self.sigmoid(self.bn2(self.fc2(scale)))


class DepthWise(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 project, with an optional residual and SE."""

    def __init__(
        self,
        in_channels: int,
        expansion: int,
        out_channels: int,
        stride: int,
        residual: bool,
        se_reduction: int | None = None,
    ) -> None:
        super().__init__()
        self.conv = ConvBlock(in_channels, expansion)
        self.conv_dw = ConvBlock(expansion, expansion, kernel=3, stride=stride, padding=1, groups=expansion)
        self.project = LinearBlock(expansion, out_channels)
        self.residual = residual
        self.se_module = SEModule(out_channels, se_reduction) if se_reduction else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        if self.se_module is not None:
            out = self.se_module(out)
        return x + out if self.residual else out


class Residual(nn.Module):
    """A stage of stride-1 residual depthwise blocks; with SE, only the last block has it."""

    def __init__(self, channels: int, expansions: tuple[int, ...], se_reduction: int | None) -> None:
        super().__init__()
        last = len(expansions) - 1
        self.model = nn.Sequential(
            *(
                DepthWise(channels, e, channels, 1, True, se_reduction if i == last else None)
                for i, e in enumerate(expansions)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class MiniFASNet(nn.Module):
    """The MiniFASNet backbone and classifier for square inputs of any size divisible by 16 or not.

    `features` returns the stride-8 `conv_4` map that the Fourier head reads; `forward` returns logits.
    """

    def __init__(
        self,
        widths: MiniFASNetWidths,
        use_se: bool,
        input_size: int = 80,
        num_classes: int = 3,
        embedding_size: int = 128,
        dropout: float = 0.2,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        se = 4 if use_se else None
        c3, c4, c5 = STAGE_WIDTHS
        self.input_size = input_size
        self.conv1 = ConvBlock(in_channels, STEM_WIDTH, kernel=3, stride=2, padding=1)
        self.conv2_dw = ConvBlock(STEM_WIDTH, STEM_WIDTH, kernel=3, padding=1, groups=STEM_WIDTH)
        self.conv_23 = DepthWise(STEM_WIDTH, widths.conv_23, c3, stride=2, residual=False)
        self.conv_3 = Residual(c3, widths.conv_3, se)
        self.conv_34 = DepthWise(c3, widths.conv_34, c4, stride=2, residual=False)
        self.conv_4 = Residual(c4, widths.conv_4, se)
        self.conv_45 = DepthWise(c4, widths.conv_45, c5, stride=2, residual=False)
        self.conv_5 = Residual(c5, widths.conv_5, se)
        self.conv_6_sep = ConvBlock(c5, HEAD_WIDTH)
        kernel = conv6_kernel_size(input_size)
        self.conv_6_dw = LinearBlock(HEAD_WIDTH, HEAD_WIDTH, kernel=kernel, groups=HEAD_WIDTH)
        self.linear = nn.Linear(HEAD_WIDTH, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)
        self.drop = nn.Dropout(dropout)
        self.prob = nn.Linear(embedding_size, num_classes, bias=False)

    # Child modules by stage, from the input: stride 2, 4, 8, 16, then the classifier (fine-tuning freezes the
    # first stages or lowers their learning rate, `fas.module.LivenessModule`).
    stages = (
        ("conv1", "conv2_dw"),
        ("conv_23", "conv_3"),
        ("conv_34", "conv_4"),
        ("conv_45", "conv_5"),
        ("conv_6_sep", "conv_6_dw", "linear", "bn", "prob"),
    )

    @property
    def feature_channels(self) -> int:
        return FT_TAP_CHANNELS

    def features(self, x: Tensor) -> Tensor:
        x = self.conv2_dw(self.conv1(x))
        return self.conv_4(self.conv_34(self.conv_3(self.conv_23(x))))

    def classify(self, features: Tensor) -> Tensor:
        x = self.conv_6_dw(self.conv_6_sep(self.conv_5(self.conv_45(features))))
        x = self.drop(self.bn(self.linear(torch.flatten(x, 1))))
        return self.prob(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x))


def minifasnet_v1(**kwargs) -> MiniFASNet:
    return MiniFASNet(V1_WIDTHS, use_se=False, **kwargs)


def minifasnet_v2(**kwargs) -> MiniFASNet:
    return MiniFASNet(V2_WIDTHS, use_se=False, **kwargs)


def minifasnet_v1se(**kwargs) -> MiniFASNet:
    return MiniFASNet(V1_WIDTHS, use_se=True, **kwargs)


def minifasnet_v2se(**kwargs) -> MiniFASNet:
    return MiniFASNet(V2_WIDTHS, use_se=True, **kwargs)
