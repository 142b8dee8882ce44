"""The PyTorch form of the export rewrites (`fas.export.layers`): exact, on every backbone."""

from __future__ import annotations

import pytest
import torch

from fas.export.layers import PReluAsConvs, export_form
from fas.models import BACKBONES, build_backbone


def test_prelu_written_as_convolutions_is_exact() -> None:
    torch.manual_seed(1)
    prelu = torch.nn.PReLU(8)
    with torch.no_grad():
        prelu.weight.copy_(torch.tensor([-0.5, 0.0, 0.1, 0.25, 0.9, 1.0, 1.7, 3.0]))  # any slope, above 1 too
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(PReluAsConvs(prelu)(x), prelu(x), rtol=0, atol=1e-6)


def randomized(backbone: torch.nn.Module) -> torch.nn.Module:
    """Trained-looking BatchNorm statistics and PReLU slopes (the defaults would hide a wrong fold or pad)."""
    with torch.no_grad():
        for layer in backbone.modules():
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 2.0)
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.uniform_(-0.2, 0.2)
            elif isinstance(layer, torch.nn.PReLU):
                layer.weight.uniform_(-0.5, 1.5)
    return backbone.eval()


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_export_form_is_exact(name: str) -> None:
    torch.manual_seed(0)
    backbone = randomized(build_backbone(name, input_size=64, num_classes=2))
    form = export_form(backbone)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(form(x), backbone(x), rtol=0, atol=1e-5)
    assert not any(isinstance(layer, torch.nn.PReLU) for layer in form.modules())
    assert not form.training and backbone.training is False


def test_minifasnet_widths_are_padded_and_its_classifier_is_one_linear() -> None:
    backbone = randomized(build_backbone("minifasnet_v2se", input_size=64, num_classes=2))
    form = export_form(backbone)
    widths = {layer.out_channels for layer in form.modules() if isinstance(layer, torch.nn.Conv2d)}
    assert all(width % 16 == 0 for width in widths), sorted(widths)
    assert 103 in {layer.out_channels for layer in backbone.modules() if isinstance(layer, torch.nn.Conv2d)}
    linears = [layer for layer in form.modules() if isinstance(layer, torch.nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(512, 2)]
    assert not any(isinstance(layer, torch.nn.BatchNorm1d | torch.nn.Dropout) for layer in form.modules())
