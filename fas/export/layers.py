"""The layer rules every export format applies, written once: how a PReLU is rewritten for fast
integer kernels, and which layers count as high-resolution (kept float in INT8 files); and the PyTorch
form of the exact rewrites that must happen before a model is traced (`export_form`).

The ONNX export (`fas.export.rewrite`, `fas.export.quantize`) applies the rules to the graph; the LiteRT
export (`fas.export.tflite`) and quantization-aware training (`fas.export.qat`), which trace the PyTorch
module itself, apply them to the module (`prelu_as_convs`, `pad_expansion_widths`, `fuse_classifier`).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from fas.models.minifasnet import DepthWise, MiniFASNet


def prelu_decomposition(slope: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-channel scales (inner, outer) with PReLU(y) = y + outer * Relu(inner * y), exact in real arithmetic.

    PReLU runs as a slow element-wise kernel in both ONNX Runtime and XNNPACK (and its INT8 form falls
    out of XNNPACK's integer kernels), while a 1x1 depthwise convolution, Relu and Add are fused and
    quantized everywhere. With every slope a <= 1: inner = a - 1 and no outer scale (for y > 0 the Relu
    term vanishes, for y < 0 it adds (a - 1) y); otherwise inner = -1 and outer = 1 - a.
    """
    slope = np.asarray(slope, np.float32).reshape(-1)
    if np.all(slope <= 1):
        return slope - 1, None
    return -np.ones_like(slope), 1 - slope


def is_high_resolution(input_side: int, output_side: int, float_stride: int) -> bool:
    """True for a layer whose output map is at most `float_stride` times smaller than the input (0: never).

    8-bit rounding noise in these layers looks like the texture cues they detect, so the INT8 recipes keep
    them float (`quantization.float_stride`, `tflite.float_stride`; experiments/int8_fidelity).
    """
    return bool(float_stride and input_side and output_side and input_side / output_side <= float_stride)


class PReluAsConvs(nn.Module):
    """PReLU as `x + outer * relu(inner * x)`, the scales as 1x1 depthwise convolutions
    (`fas.export.layers.prelu_decomposition`, the ONNX export's rewrite too).

    litert-torch lowers PReLU to `relu(x) - a * relu(-x)`: in an INT8 graph that per-channel MUL and the
    SUB around it fall outside XNNPACK's integer kernels, so each of MiniFASNet's 33 PReLUs splits the
    graph and runs on reference kernels (MiniFASNetV2-80 INT8: 4.1 ms, slower than FP32's 1.1 ms, on an
    Intel Xeon with AVX-512). Convolutions, RELU and ADD stay in XNNPACK: 0.86 ms.
    """

    def __init__(self, prelu: nn.PReLU) -> None:
        super().__init__()
        slope = prelu.weight.detach().reshape(-1)
        if slope.numel() < 2:
            raise ValueError("PReluAsConvs needs a per-channel PReLU")
        inner, outer = prelu_decomposition(slope.numpy())
        self.inner = depthwise_scale(inner)
        self.outer = depthwise_scale(outer) if outer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rectified = torch.relu(self.inner(x))
        return x + (self.outer(rectified) if self.outer is not None else rectified)


def depthwise_scale(scale: np.ndarray) -> nn.Conv2d:
    """A 1x1 depthwise convolution multiplying channel c by scale[c]."""
    channels = scale.size
    conv = nn.Conv2d(channels, channels, 1, groups=channels, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(scale).reshape(channels, 1, 1, 1))
    return conv


def prelu_as_convs(module: nn.Module) -> nn.Module:
    """`module` with every per-channel PReLU replaced by `PReluAsConvs` (in place; pass a copy)."""
    for name, child in module.named_children():
        if isinstance(child, nn.PReLU) and child.weight.numel() > 1:
            setattr(module, name, PReluAsConvs(child))
        else:
            prelu_as_convs(child)
    return module


def export_form(backbone: nn.Module, multiple: int = 16) -> nn.Module:
    """A copy of `backbone` in eval mode with the rewrites of fas's CPU graph done in PyTorch: every PReLU
    as convolutions, MiniFASNet's expansion widths padded to `multiple` and its classifier fused into one
    Linear. Its logits equal the backbone's in eval mode up to float rounding."""
    model = prelu_as_convs(copy.deepcopy(backbone).eval().to(memory_format=torch.contiguous_format))
    if isinstance(model, MiniFASNet):
        pad_expansion_widths(model, multiple)
        fuse_classifier(model)
    return model.eval()  # the new layers too


def pad_expansion_widths(model: MiniFASNet, multiple: int = 16) -> MiniFASNet:
    """Pad every depthwise block's expansion width to a multiple of `multiple` with zero channels, in place:
    the PyTorch twin of `fas.export.rewrite.pad_channels` (ONNX Runtime's blocked layout and its int8 kernels
    want multiples of 16; the pruned widths 13, 103, 231, ... are not). The expand convolution's new filters
    and the projection's new input columns are zero, so the padded channels stay exactly zero and change
    nothing. Their BatchNorms are identities (scale 1, shift 0, mean 0, variance 1), not zero scales:
    quantization-aware training divides by the scale when it simulates the BatchNorm fold.
    Run after `prelu_as_convs`: the padded activation is a zero 1x1 depthwise scale."""
    for block in model.modules():
        if not isinstance(block, DepthWise):
            continue
        width = block.conv.conv.out_channels
        extra = -width % multiple
        if not extra:
            continue
        block.conv.conv = grown_conv(block.conv.conv, out_extra=extra)
        block.conv_dw.conv = grown_conv(block.conv_dw.conv, out_extra=extra, in_extra=extra, groups=width + extra)
        block.project.conv = grown_conv(block.project.conv, in_extra=extra)
        for layer in (block.conv, block.conv_dw):
            layer.bn = grown_batch_norm(layer.bn, extra)
            layer.prelu = grown_module(layer.prelu, extra)
    return model


def grown_conv(conv: nn.Conv2d, out_extra: int = 0, in_extra: int = 0, groups: int | None = None) -> nn.Conv2d:
    """`conv` with `out_extra` more filters and `in_extra` more input channels, all new weights zero."""
    grown = nn.Conv2d(
        conv.in_channels + in_extra,
        conv.out_channels + out_extra,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        groups=groups or conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        grown.weight.zero_()
        grown.weight[: conv.weight.shape[0], : conv.weight.shape[1]] = conv.weight
        if conv.bias is not None:
            grown.bias.zero_()
            grown.bias[: conv.out_channels] = conv.bias
    return grown


def grown_batch_norm(bn: nn.BatchNorm2d, extra: int) -> nn.BatchNorm2d:
    """`bn` with `extra` identity channels (its new parameters and statistics at their defaults)."""
    grown = nn.BatchNorm2d(bn.num_features + extra, bn.eps, bn.momentum)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(grown, name)[: bn.num_features] = getattr(bn, name)
    grown.num_batches_tracked.copy_(bn.num_batches_tracked)
    return grown


def grown_module(activation: nn.Module, extra: int) -> nn.Module:
    """A PReLU written as convolutions (`PReluAsConvs`) with `extra` zero channels; anything else as it is."""
    if not isinstance(activation, PReluAsConvs):
        return activation
    channels = activation.inner.out_channels + extra
    activation.inner = grown_conv(activation.inner, out_extra=extra, in_extra=extra, groups=channels)
    if activation.outer is not None:
        activation.outer = grown_conv(activation.outer, out_extra=extra, in_extra=extra, groups=channels)
    return activation


def fuse_classifier(model: MiniFASNet) -> MiniFASNet:
    """MiniFASNet's classifier at inference, linear -> BatchNorm1d -> dropout -> prob, as one Linear (in place):
    the PyTorch twin of `fas.export.rewrite.fuse_gemm_chains`, computed in float64."""
    bn = model.bn
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    embedding, classes = model.linear.weight.double(), model.prob.weight.double()
    fused = nn.Linear(embedding.shape[1], classes.shape[0])
    with torch.no_grad():
        fused.weight.copy_(classes @ (scale[:, None] * embedding))
        fused.bias.copy_(classes @ shift)
    model.linear, model.bn, model.drop, model.prob = fused, nn.Identity(), nn.Identity(), nn.Identity()
    return model
