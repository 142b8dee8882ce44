"""Backbones by name: every model config picks one of `BACKBONES` with `backbone: <name>`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from fas.errors import FasError
from fas.models.ft_head import FTHead
from fas.models.minifasnet import MiniFASNet, minifasnet_v1, minifasnet_v1se, minifasnet_v2, minifasnet_v2se
from fas.models.mobilenetv4 import MobileNetV4ConvSmall

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "minifasnet_v1": minifasnet_v1,
    "minifasnet_v2": minifasnet_v2,
    "minifasnet_v1se": minifasnet_v1se,
    "minifasnet_v2se": minifasnet_v2se,
    "mobilenetv4": MobileNetV4ConvSmall,
}


class UnknownBackboneError(FasError, ValueError):
    """The config names a backbone that is not in `BACKBONES`."""


def build_backbone(
    name: str, input_size: int, num_classes: int, embedding_size: int = 128, dropout: float = 0.2
) -> nn.Module:
    """Build a registered backbone; it exposes `features` (stride-8 map), `classify` and `forward`."""
    if name not in BACKBONES:
        raise UnknownBackboneError(
            f"Unknown backbone '{name}'. Choose one of: {', '.join(BACKBONES)} (e.g. model=minifasnet_v2se)."
        )
    return BACKBONES[name](
        input_size=input_size, num_classes=num_classes, embedding_size=embedding_size, dropout=dropout
    )


__all__ = ["BACKBONES", "FTHead", "MiniFASNet", "MobileNetV4ConvSmall", "UnknownBackboneError", "build_backbone"]
