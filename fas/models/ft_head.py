"""The Fourier-transform auxiliary head (`FTGenerator` in Silent-Face), used in training only."""

from __future__ import annotations

from torch import Tensor, nn


class FTHead(nn.Module):
    """Three 3x3 conv+BN+ReLU layers (in -> 128 -> 64 -> 1) that predict the log-spectrum map.

    The output keeps the spatial size of the stride-8 feature map it reads: 10x10 at 80 px input,
    16x16 at 128 px, which is twice the side of MiniFASNet's final depthwise kernel.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((in_channels, 128), (128, 64), (64, 1)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.ft = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.ft(features)
